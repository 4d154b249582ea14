"""The on-device side: the EI-BERT runtime (numpy only, no torch) and its tokenizer (issue 6)."""
