"""Token ids for the NLU tasks, length-bucketed batches and the training schedule shared by the
teacher, general distillation and task distillation (issue 6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from edgerec.compress.tasks import TaskData
from edgerec.serve.edge.tokenizer import WordPiece


@dataclass
class Encoded:
    ids: list[list[int]]  # per sentence, [CLS] ... [SEP]
    y: np.ndarray
    group: np.ndarray | None = None  # augmented sets: the copy each sentence belongs to (-1: every epoch)

    def __len__(self) -> int:
        return len(self.ids)


def encode(tok: WordPiece, task: TaskData, max_len: int = 64) -> dict[str, Encoded]:
    return {s: Encoded([tok.encode(t, max_len) for t in task.text[s]], task.y[s]) for s in task.text}


def to_teacher_ids(e: Encoded, kept_old: np.ndarray) -> Encoded:
    """The same sentences in the student's pieces, as teacher vocabulary ids (kept_old[i]: the
    teacher id of student token i), so student and teacher read aligned sequences."""
    return Encoded([kept_old[np.asarray(x)].tolist() for x in e.ids], e.y, e.group)


def warmup_linear(opt: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first `warmup` share of `total` steps, then linear decay to 0."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (warmup * total)) * max(0.0, 1 - s / total))


def pad(ids: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(x) for x in ids)
    out = np.full((len(ids), n), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), n), dtype=np.int64)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)  # (B, T), (B, T)


@torch.no_grad()
def accuracy(model, enc: Encoded, task: str, batch_size: int = 256) -> float:
    """Share of `enc`'s sentences whose argmax logit is the label (teacher and student alike)."""
    model.eval()
    correct = 0
    for idx in batches(enc, batch_size):
        ids, mask = pad([enc.ids[i] for i in idx])
        correct += int((model(ids, mask, task)["logits"].argmax(-1).numpy() == enc.y[idx]).sum())
    return correct / max(len(enc), 1)


def batches(enc: Encoded, batch_size: int, rng: np.random.Generator | None = None,
            subset: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Index arrays (of `subset` only, if given); with `rng`, shuffled but bucketed by length (sort
    within chunks of 50 batches) so padding stays small, and the batch order shuffled."""
    n = len(enc)
    if rng is None:
        order = np.argsort([len(x) for x in enc.ids], kind="stable")  # eval: by length
        if subset is not None:
            order = order[np.isin(order, subset)]
        return (order[i: i + batch_size] for i in range(0, len(order), batch_size))
    perm = rng.permutation(n) if subset is None else rng.permutation(np.asarray(subset))
    n = len(perm)
    chunk = batch_size * 50
    out = []
    for lo in range(0, n, chunk):
        part = perm[lo: lo + chunk]
        part = part[np.argsort([len(enc.ids[i]) for i in part], kind="stable")]
        out += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return iter(out)
