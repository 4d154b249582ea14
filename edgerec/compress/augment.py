"""Teacher-labelled transfer set for distillation (issue 6): perturbed copies of the training sentences.

Why: the student is matched to the teacher only on the ~1-9k labelled sentences per task, too few
inputs to pin down the teacher's function (validation accuracy flattens after a few epochs while the
teacher is 8-10 points ahead). Tang et al. 2019 ("Distilling task-specific knowledge from BERT into
simple neural networks") and TinyBERT both widen the transfer set with perturbed sentences that only
the TEACHER labels: a perturbation can flip the gold label ("not good" -> "[MASK] good"), so an
augmented sentence carries soft labels only (y = -1 here; `distill` uses no cross-entropy on it).

Two of Tang et al.'s operations, on whole words (a piece plus its ## continuations), in the student's
pieces so the student and teacher views stay aligned:
  * mask: each word becomes one [MASK] with probability p_mask;
  * n-gram: with probability p_ngram the copy keeps only a random window of 1-5 words.
Their third (swapping words of the same part of speech) needs a tagger we do not ship.
"""

from __future__ import annotations

import numpy as np

from edgerec.compress.data import Encoded


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
            p_mask: float = 0.1, p_ngram: float = 0.25, max_ngram: int = 5) -> Encoded:
    """`copies` perturbed versions of every sentence of `enc`, labels -1 (teacher-labelled only).

    Deterministic for a seed. Copies identical to their source are kept (the teacher's soft label
    on them is still a valid target); sentences without words are skipped."""
    rng = np.random.default_rng([seed, 23])
    out: list[list[int]] = []
    for ids in enc.ids:
        spans = word_spans(ids, is_continuation)
        if not spans:
            continue
        for _ in range(copies):
            words = spans
            if len(words) > 1 and rng.random() < p_ngram:
                n = int(rng.integers(1, min(max_ngram, len(words)) + 1))
                lo = int(rng.integers(0, len(words) - n + 1))
                words = words[lo: lo + n]
            body: list[int] = []
            for s, e in words:
                body += [mask_id] if rng.random() < p_mask else ids[s:e]
            out.append([ids[0], *body, ids[-1]])
    return Encoded(out, np.full(len(out), -1, dtype=np.int64))
