"""`edgerec compress`: teacher -> vocabulary pruning -> distillation -> int8 -> packed file (issue 6).

    build(CompressConfig(method="cross", seed=1)) -> report dict (accuracies, sizes, byte breakdown)

The order is the paper's (ei-bert.md §2): fine-tuned teachers, hard token pruning, distillation
(kd / tinybert / cross, same student and budget), post-training int8, packing. Every number a user
would ask about is in the report: teacher accuracy with its own and with the pruned vocabulary
(the pruning cost), the [UNK] rate, student accuracy in fp32 and int8 and from the packed file
through the numpy runtime, and the artifact's byte breakdown.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgerec.compress.augment import augment, neighbour_table
from edgerec.compress.data import Encoded, accuracy, encode, to_teacher_ids
from edgerec.compress.distill import DistillConfig, distill, init_heads, init_student
from edgerec.compress.general import GeneralConfig, cached_general, general_sentences, transfer_sentences
from edgerec.compress.pack import write_artifact
from edgerec.compress.prune import attention_importance, general_floor, remap, select_vocab, unk_rate
from edgerec.compress.quantize import dequantized, export_tensors
from edgerec.compress.tasks import TASKS, TaskData, load_task
from edgerec.compress.teacher import cached_teacher, load_pretrained, teacher_tokenizer
from edgerec.models.eibert import EIBertConfig
from edgerec.serve.edge.tokenizer import WordPiece

SIZE_LIMIT_BYTES = 1_910_000  # 1.91 MB (decimal), the paper's artifact size


@dataclass
class CompressConfig:
    method: str = "cross"
    tasks: tuple[str, ...] = TASKS
    seed: int = 1  # student seed; the teachers use seed 0 and are shared by all students
    vocab_size: int = 7000
    vocab_floor: int = 0  # most frequent general-language pieces kept by pruning (prune.general_floor); 0 = none
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 512
    emb_dim: int | None = None  # < hidden: factorized word embeddings (V x E, then E -> H)
    max_len: int = 64
    embedding_bits: int = 8
    teacher_epochs: int = 3
    distill: dict = field(default_factory=dict)  # DistillConfig overrides
    general: dict | None = None  # GeneralConfig overrides; None = no general distillation phase
    transfer: dict = field(default_factory=dict)  # task -> unlabeled sentences its teacher labels (soft only)
    limit_per_split: int | None = None  # smoke runs: first N sentences of each split


def _limit(task: TaskData, n: int | None) -> TaskData:
    if n is None:
        return task
    return TaskData(task.name, task.labels, {s: v[:n] for s, v in task.text.items()},
                    {s: v[:n] for s, v in task.y.items()})


def _check_tasks(key: str, named, tasks) -> None:
    """A config key that names tasks may only name tasks being built."""
    unknown = sorted(set(named) - set(tasks))
    if unknown:
        raise ValueError(f"{key}: unknown task(s) {unknown}; tasks are {list(tasks)}")


def build(cfg: CompressConfig, out: str | Path, log=print, progress: bool = True) -> dict:
    t0 = time.time()
    tok_t = teacher_tokenizer()
    tasks = {t: _limit(load_task(t), cfg.limit_per_split) for t in cfg.tasks}
    enc_t = {t: encode(tok_t, d, cfg.max_len) for t, d in tasks.items()}
    teachers, teacher_info = {}, {}
    for t, d in tasks.items():
        if cfg.teacher_epochs > 0:
            teachers[t], teacher_info[t] = cached_teacher(t, len(d.labels), enc_t[t], seed=0,
                                                          epochs=cfg.teacher_epochs, log=log, progress=progress)
        else:  # smoke runs: the pre-trained encoder with an untrained head
            torch.manual_seed(0)
            teachers[t], teacher_info[t] = load_pretrained({t: len(d.labels)}).eval(), {"epochs": 0}
    report: dict = {"config": asdict(cfg), "teacher": {}, "pruning": {}, "student": {}}
    for t in tasks:
        report["teacher"][t] = {"test_acc": accuracy(teachers[t], enc_t[t]["test"], t), **teacher_info[t]}

    # ---- hard token pruning -----------------------------------------------------------------
    V = len(tok_t.vocab)
    score, freq = np.zeros(V), np.zeros(V)
    for t in tasks:
        s, f = attention_importance(teachers[t], enc_t[t]["train"], t, V)
        score += s
        freq += f
    floor = None
    if cfg.vocab_floor:  # general-language pieces kept whatever the tasks hold (prune.general_floor)
        floor = general_floor(tok_t, general_sentences(20_000), cfg.vocab_floor)
    kept = select_vocab(tok_t.vocab, score, freq, cfg.vocab_size, floor)
    kept_old = remap(tok_t.vocab, kept)
    tok_s = WordPiece(kept)
    enc_s = {t: encode(tok_s, d, cfg.max_len) for t, d in tasks.items()}
    enc_st = {t: {s: to_teacher_ids(e, kept_old) for s, e in enc_s[t].items()} for t in tasks}
    E = cfg.emb_dim or cfg.hidden
    report["pruning"] = {
        "vocab_before": V, "vocab_after": len(kept),
        "embedding_bytes_saved_int8": (V - len(kept)) * (E + 4),  # rows x (int8 values + fp32 scale)
        "unk_rate_valid": {t: unk_rate(tok_s, d.text["valid"], cfg.max_len) for t, d in tasks.items()},
        "unk_rate_valid_teacher_vocab": {t: unk_rate(tok_t, d.text["valid"], cfg.max_len) for t, d in tasks.items()},
        "teacher_test_acc_pruned_view": {t: accuracy(teachers[t], enc_st[t]["test"], t) for t in tasks},
        "pieces_per_sentence": {t: float(np.mean([len(x) for x in enc_s[t]["valid"].ids])) for t in tasks},
        "pieces_per_sentence_teacher_vocab": {t: float(np.mean([len(x) for x in enc_t[t]["valid"].ids])) for t in tasks},
    }
    if floor is not None:  # what the floor costs: pieces the task scores alone would not have kept
        by_score = set(select_vocab(tok_t.vocab, score, freq, cfg.vocab_size))
        added = sum(1 for i in floor if tok_t.vocab[i] not in by_score and tok_t.vocab[i] in tok_s.index)
        report["pruning"]["vocab_floor"] = {
            "pieces": int(len(floor)), "not_chosen_by_task_scores": added,
            "their_bytes_int8": added * (E + 4),
            "note": "below the vocabulary size these are added; at it they replace the lowest-scoring task pieces"}
    log(f"pruned vocabulary {V:,} -> {len(kept):,} tokens; [UNK] rate (valid) "
        + ", ".join(f"{t} {r:.2%}" for t, r in report["pruning"]["unk_rate_valid"].items()))

    # ---- student + distillation -------------------------------------------------------------
    dcfg = DistillConfig(method=cfg.method, seed=cfg.seed, **cfg.distill)
    scfg = EIBertConfig(vocab_size=len(kept), hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads, ffn=cfg.ffn,
                        max_positions=cfg.max_len, emb_dim=cfg.emb_dim,
                        tasks={t: len(d.labels) for t, d in tasks.items()},
                        head_via=384 if cfg.method == "cross" else None)
    torch.manual_seed(cfg.seed)
    pretrained = load_pretrained({})
    student = init_student(pretrained, kept_old, scfg)
    if cfg.general is not None:  # task-agnostic phase on unlabeled text (edgerec/compress/general.py)
        report["general"] = cached_general(student, pretrained, tasks, tok_s, kept_old, GeneralConfig(**cfg.general),
                                           log=log, progress=progress)
    work_teachers = {t: copy.deepcopy(m) for t, m in teachers.items()}  # cross trains them
    init_heads(student, work_teachers)
    report["student"]["init_valid_acc"] = {t: accuracy(student, enc_s[t]["valid"], t) for t in tasks}
    if dcfg.augment > 0:  # the teacher-labelled transfer set, in the student's pieces and the teacher's ids
        _check_tasks("distill.augment_tasks", dcfg.augment_tasks or (), tasks)
        cont = np.array([p.startswith("##") for p in kept])
        mask_id = tok_s.index["[MASK]"]
        neighbours = None
        if dcfg.augment_replace_p > 0:  # cosine neighbours in the pre-trained teacher's embeddings
            neighbours = neighbour_table(pretrained.encoder.word.weight.detach()[torch.from_numpy(kept_old)].numpy(),
                                         kept)
        for i, t in enumerate(tasks):
            if dcfg.augment_tasks is not None and t not in dcfg.augment_tasks:
                continue
            enc_s[t]["augmented"] = augment(enc_s[t]["train"], dcfg.augment, cont, mask_id, seed=dcfg.seed * 100 + i,
                                            p_mask=dcfg.augment_mask_p, p_ngram=dcfg.augment_ngram_p,
                                            p_replace=dcfg.augment_replace_p, neighbours=neighbours)
            enc_st[t]["augmented"] = to_teacher_ids(enc_s[t]["augmented"], kept_old)
        report["student"]["augmented_sentences"] = {t: len(enc_s[t]["augmented"]) for t in tasks
                                                    if "augmented" in enc_s[t]}
    if cfg.transfer:  # real unlabeled text in no task split, labelled by the task's teacher (soft only)
        _check_tasks("transfer", cfg.transfer, tasks)
        pool = transfer_sentences(tasks, max(cfg.transfer.values()))
        for t, n in cfg.transfer.items():
            m = min(n, len(pool))
            extra = Encoded([tok_s.encode(x, cfg.max_len) for x in pool[:n]], np.full(m, -1), np.full(m, -1))
            have = enc_s[t].get("augmented")  # group -1: every epoch, also when copies rotate
            enc_s[t]["augmented"] = extra if have is None else Encoded(
                have.ids + extra.ids, np.concatenate([have.y, extra.y]), np.concatenate([have.group, extra.group]))
            enc_st[t]["augmented"] = to_teacher_ids(enc_s[t]["augmented"], kept_old)
        report["student"]["transfer_sentences"] = {t: min(n, len(pool)) for t, n in cfg.transfer.items()}
    report["student"]["distill"] = distill(student, work_teachers, enc_s, enc_st, dcfg, log=log, progress=progress)
    report["student"]["params"] = int(sum(p.numel() for n, p in student.named_parameters()))
    report["student"]["test_acc_fp32"] = {t: accuracy(student, enc_s[t]["test"], t) for t in tasks}
    if cfg.method == "cross":
        report["teacher_after_cross"] = {t: accuracy(work_teachers[t], enc_st[t]["test"], t) for t in tasks}

    # ---- int8 + pack ------------------------------------------------------------------------
    tensors = export_tensors(student, cfg.embedding_bits)
    q_student = quantized_copy(student, tensors)
    report["student"]["test_acc_int8"] = {t: accuracy(q_student, enc_s[t]["test"], t) for t in tasks}
    config = {k: v for k, v in scfg.to_dict().items() if k not in ("tasks", "head_via", "dropout")}
    breakdown = write_artifact(out, config, {t: d.labels for t, d in tasks.items()}, kept, tensors)
    report["artifact"] = {"path": str(out), **breakdown, "limit_bytes": SIZE_LIMIT_BYTES,
                          "within_limit": breakdown["total"] <= SIZE_LIMIT_BYTES}
    from edgerec.serve.edge.runtime import EdgeModel

    edge = EdgeModel.load(out)
    report["student"]["test_acc_packed_numpy"] = {t: _edge_accuracy(edge, tasks[t], t) for t in tasks}
    report["seconds"] = round(time.time() - t0, 1)
    return report


def model_from_weights(config: EIBertConfig, weights: dict[str, np.ndarray]):
    """An EI-BERT in eval mode holding `weights`, float32 arrays named as the packed file names them
    (`encoder.*`, merged heads `head.<task>.weight|bias`); `config` without head_via."""
    from edgerec.models.eibert import EIBert

    model = EIBert(config).eval()
    model.encoder.load_state_dict({k.removeprefix("encoder."): torch.from_numpy(np.array(v))
                                   for k, v in weights.items() if k.startswith("encoder.")})
    with torch.no_grad():
        for t in model.heads:
            model.heads[t].weight.copy_(torch.from_numpy(np.array(weights[f"head.{t}.weight"])))
            model.heads[t].bias.copy_(torch.from_numpy(np.array(weights[f"head.{t}.bias"])))
    return model


def quantized_copy(student, tensors: dict[str, dict]):
    """The PyTorch int8 model: the student with every weight replaced by its dequantized value and
    the merged heads (what the packed file holds)."""
    config = EIBertConfig(**{**student.config.to_dict(), "head_via": None})
    return model_from_weights(config, {k: dequantized(v) for k, v in tensors.items()})


def _edge_accuracy(edge, task: TaskData, name: str, batch: int = 64) -> float:
    texts, y = task.text["test"], task.y["test"]
    pred = np.concatenate([edge.logits(texts[i: i + batch], name).argmax(-1) for i in range(0, len(texts), batch)])
    return float((pred == y).mean()) if len(y) else 0.0
