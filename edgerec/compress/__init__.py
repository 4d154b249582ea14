"""EI-BERT: compress a BERT teacher into an on-device NLU model (issue 6): tasks, tokenizer, teacher,
student, vocabulary pruning, cross-distillation, int8 quantization, packing."""
