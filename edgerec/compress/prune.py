"""Hard token pruning: keep the vocabulary tokens the teacher's attention says matter (issue 6).

Score (ei-bert.md §3, our reading [R]): for token w, the attention mass flowing INTO its
occurrences, summed over layers, heads and sentences of the task corpora and divided by
L·H·N (N = all sentences, so frequent tokens score higher: coverage matters for the [UNK] rate).
Scored with the fine-tuned TEACHERS (one per task, each on its own training split): their
attention is trained and the student does not exist yet. [CLS]/[SEP] soak up attention, so the
specials are excluded from the ranking and always kept.

Kept unconditionally besides the specials: every single-character token and its '##' form that
occurs in the corpora, so any word can still be spelled out and [UNK] stays rare. Then the
top-scoring tokens up to `k`. Pruning is static: the tokenizer simply uses the smaller vocabulary,
and a dropped word falls back to its sub-pieces.
"""

from __future__ import annotations

import numpy as np
import torch

from edgerec.compress.data import Encoded, batches, pad
from edgerec.serve.edge.tokenizer import SPECIALS, WordPiece


@torch.no_grad()
def attention_importance(model, enc: Encoded, task: str, vocab_size: int, batch_size: int = 64
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(score (V,), frequency (V,)) over `enc`'s sentences."""
    model.eval()
    score = torch.zeros(vocab_size, dtype=torch.float64)
    freq = torch.zeros(vocab_size, dtype=torch.float64)
    n_layers = n_heads = 0
    for idx in batches(enc, batch_size):
        ids, mask = pad([enc.ids[i] for i in idx])
        atts = model(ids, mask, task)["attentions"]  # L x (B, h, T, T)
        n_layers, n_heads = len(atts), atts[0].shape[1]
        received = torch.stack(atts).sum(dim=(0, 2)).sum(dim=1)  # (B, T): sum over layers, heads, queries
        m = mask.bool()
        score.index_add_(0, ids[m], received[m].double())
        freq.index_add_(0, ids[m], torch.ones(int(m.sum()), dtype=torch.float64))
    return (score / max(n_layers * n_heads * len(enc), 1)).numpy(), freq.numpy()


def select_vocab(vocab: list[str], score: np.ndarray, freq: np.ndarray, k: int,
                 floor: np.ndarray | None = None) -> list[str]:
    """The kept token strings, specials first (in BERT's order), then characters, then the `floor`
    (indices of frequent general-language pieces, `general_floor`), then by score."""
    special = [t for t in SPECIALS]
    is_special = np.array([t in SPECIALS or (t.startswith("[") and t.endswith("]")) for t in vocab])
    seen = freq > 0
    chars = [i for i, t in enumerate(vocab) if not is_special[i] and seen[i]
             and (len(t) == 1 or (t.startswith("##") and len(t) == 3))]
    keep = set(chars)
    budget = k - len(special)
    if len(keep) > budget:
        raise ValueError(f"k={k} is smaller than the {len(keep) + len(special)} tokens kept unconditionally")
    for i in (floor if floor is not None else ()):
        if len(keep) >= budget:
            break
        if not is_special[int(i)]:
            keep.add(int(i))
    order = np.argsort(-score, kind="stable")
    for i in order:
        if len(keep) >= budget or score[i] <= 0:
            break
        if not is_special[i]:
            keep.add(int(i))
    return special + [vocab[i] for i in sorted(keep)]


def general_floor(tok: WordPiece, sentences: list[str], n: int, max_len: int = 64) -> np.ndarray:
    """The n most frequent teacher pieces of general-language text (most frequent first): kept by
    pruning whatever the task corpora contain, so a model trained on a narrow task (a user's intent
    file of 300 lines) still reads the everyday words its users will type."""
    counts = np.zeros(len(tok.vocab), dtype=np.int64)
    for t in sentences:
        ids = tok.encode(t, max_len)[1:-1]
        np.add.at(counts, ids, 1)
    order = np.argsort(-counts, kind="stable")
    return order[:n][counts[order[:n]] > 0]


def unk_rate(tok: WordPiece, texts: list[str], max_len: int = 64) -> float:
    total = unk = 0
    for t in texts:
        ids = tok.encode(t, max_len)[1:-1]
        total += len(ids)
        unk += sum(1 for i in ids if i == tok.unk)
    return unk / max(total, 1)


def remap(teacher_vocab: list[str], kept: list[str]) -> np.ndarray:
    """Old (teacher) id of each kept token, in the kept order: rows to slice from the embedding table."""
    index = {t: i for i, t in enumerate(teacher_vocab)}
    return np.array([index[t] for t in kept], dtype=np.int64)
