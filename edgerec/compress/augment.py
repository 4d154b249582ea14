"""Teacher-labelled transfer set for distillation (issue 6): perturbed copies of the training sentences.

Why: the student is matched to the teacher only on the ~1-9k labelled sentences per task, too few
inputs to pin down the teacher's function (validation accuracy flattens after a few epochs while the
teacher is 8-10 points ahead). Tang et al. 2019 ("Distilling task-specific knowledge from BERT into
simple neural networks") and TinyBERT both widen the transfer set with perturbed sentences that only
the TEACHER labels: a perturbation can flip the gold label ("not good" -> "[MASK] good"), so an
augmented sentence carries soft labels only (y = -1 here; `distill` uses no cross-entropy on it).

Three operations, on whole words (a piece plus its ## continuations), in the student's pieces so
the student and teacher views stay aligned:
  * mask (Tang et al.): each word becomes one [MASK] with probability p_mask;
  * replace (TinyBERT's word replacement): a single-piece word becomes one of its k nearest
    whole-word neighbours with probability p_replace. TinyBERT ranks candidates with BERT's masked-LM
    head and GloVe; neither ships here, so the neighbours are cosine neighbours in the pre-trained
    teacher's input embedding table, which are close in meaning ("good" -> excellent, bad, great,
    ...). Swapping "good" for "bad" flips the sentence: exactly the contrast the teacher's soft label
    then teaches the student. It stands in for Tang et al.'s same-part-of-speech swap, which needs a
    tagger we do not ship;
  * n-gram (Tang et al.): with probability p_ngram the copy keeps only a random window of 1-5 words.
"""

from __future__ import annotations

import numpy as np

from edgerec.compress.data import Encoded


def neighbour_table(emb: np.ndarray, vocab: list[str], k: int = 15) -> np.ndarray:
    """(V, k) ids of each word token's k nearest whole-word tokens by cosine in `emb` (V, D), -1
    where a token is not a candidate (## pieces, punctuation, digits, single letters, [CLS] ...)."""
    ok = np.array([v.isalpha() and len(v) > 1 for v in vocab])
    out = np.full((len(vocab), k), -1, dtype=np.int64)
    cand = np.flatnonzero(ok)
    if len(cand) <= 1:
        return out
    k_eff = min(k, len(cand) - 1)
    x = emb[cand] / np.maximum(np.linalg.norm(emb[cand], axis=1, keepdims=True), 1e-12)  # (C, D)
    for lo in range(0, len(cand), 1024):
        sim = x[lo: lo + 1024] @ x.T  # (b, C)
        sim[np.arange(sim.shape[0]), np.arange(lo, lo + sim.shape[0])] = -np.inf  # not itself
        top = np.argpartition(-sim, k_eff, axis=1)[:, :k_eff]  # (b, k_eff), unordered
        out[cand[lo: lo + 1024], :k_eff] = cand[top]
    return out


def word_spans(ids: list[int], is_continuation: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each word in a [CLS] ... [SEP] sentence; pieces marked as continuations
    (## pieces) join the word before them."""
    spans: list[tuple[int, int]] = []
    for i in range(1, len(ids) - 1):
        if spans and is_continuation[ids[i]]:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


def augment(enc: Encoded, copies: int, is_continuation: np.ndarray, mask_id: int, seed: int = 0,
            p_mask: float = 0.1, p_ngram: float = 0.25, max_ngram: int = 5, p_replace: float = 0.0,
            neighbours: np.ndarray | None = None) -> Encoded:
    """`copies` perturbed versions of every sentence of `enc`, labels -1 (teacher-labelled only).

    `group` holds each row's copy index (rows are sentence-major: the copies of sentence 0, then of
    sentence 1, ...), so a trainer can show one fresh copy per epoch. Sentences without words are
    skipped. Copies identical to their source are kept (the teacher's soft label on them is still a
    valid target). Deterministic for a seed; with p_replace = 0 the draws are those of the first
    version (mask and n-gram only). `p_replace` needs `neighbours` (neighbour_table)."""
    if p_replace > 0 and neighbours is None:
        raise ValueError("augment: p_replace > 0 needs a neighbour table (augment.neighbour_table)")
    rng = np.random.default_rng([seed, 23])
    out: list[list[int]] = []
    group: list[int] = []
    for ids in enc.ids:
        spans = word_spans(ids, is_continuation)
        if not spans:
            continue
        for c in range(copies):
            words = spans
            if len(words) > 1 and rng.random() < p_ngram:
                n = int(rng.integers(1, min(max_ngram, len(words)) + 1))
                lo = int(rng.integers(0, len(words) - n + 1))
                words = words[lo: lo + n]
            body: list[int] = []
            for s, e in words:
                r = rng.random()
                if r < p_mask:
                    body.append(mask_id)
                elif r < p_mask + p_replace and e - s == 1 and neighbours[ids[s], 0] >= 0:
                    row = neighbours[ids[s]]
                    row = row[row >= 0]
                    body.append(int(row[rng.integers(len(row))]))
                else:
                    body += ids[s:e]
            out.append([ids[0], *body, ids[-1]])
            group.append(c)
    return Encoded(out, np.full(len(out), -1, dtype=np.int64), np.asarray(group, dtype=np.int64))
