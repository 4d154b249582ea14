"""Evaluation metrics, vectorized with numpy.

Conventions (tested against scikit-learn and brute force in tests/test_metrics.py):
  AUC      global ROC AUC; tied scores count one half (equals sklearn.metrics.roc_auc_score).
  GAUC     per-group AUC weighted by the group's number of samples (impressions), skipping groups
           whose labels are all 0 or all 1 (the DIN definition; FuxiCTR / TorchRec gAUC).
  logloss  mean binary cross-entropy with predictions clipped to [1e-7, 1 - 1e-7].
  NDCG@k, HR@k
           ranking within each group (user or request); groups without a positive are skipped;
           binary relevance; ties are broken pessimistically (a positive is ranked after every
           negative with the same score), so a constant predictor gets no credit.
  NAME:SUBSET
           any metric above on a subset of the samples that the split names (`Split.metric_subsets`):
           `GAUC:repeat` over the pairs whose positive item the user had before ("which of his usual
           items now"), `GAUC:new` over the rest. NaN when the subset is empty.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from edgerec.features.definition import cut

EPS = 1e-7


# AUC, GAUC and logloss are exact over the whole split, and that split may hold millions of
# samples (an out-of-core validation set): they sort once and otherwise keep O(samples) arrays to a
# few bytes per sample (the sort order, the sorted scores and labels), never float64 copies and
# per-sample rank arrays, so evaluating does not set a training run's peak memory (bench/scale.py).
LOGLOSS_CHUNK = 1 << 18  # samples per chunk of the log-loss sum


def _tied_runs(tied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tied (n - 1,) bool: sorted element i equals element i + 1 (same score, same group) -> the runs
    of two or more equal elements as (first, last) positions, inclusive. O(tied pairs) memory.
    Example: tied = [F, T, T, F, T] (elements 1 = 2 = 3 and 4 = 5) -> first [1, 4], last [3, 5]."""
    at = np.flatnonzero(tied)  # (T,) pairs (i, i + 1) that tie
    if not len(at):
        return at, at
    new = np.r_[True, at[1:] != at[:-1] + 1]  # a pair that does not continue the previous run
    return at[new], np.r_[at[np.flatnonzero(new)[1:] - 1], at[-1]] + 1


def _positive_rank_sums(lab: np.ndarray, tied: np.ndarray, group_of, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Twice the sum of the 1-based positions of the positives in a sorted array, ties given their
    run's average position (ranks as scipy.stats.rankdata), per group. lab (n,) bool in sorted
    order; group_of(positions) -> their group ids, 0..n_groups - 1. -> (twice the rank sum, positives)
    per group, (n_groups,) int64 each."""
    pos = np.flatnonzero(lab)  # (P,)
    gid = group_of(pos)
    twice = np.bincount(gid, weights=2 * (pos + 1), minlength=n_groups).astype(np.int64)  # exact below 2**53 (~9e7 samples)
    n_pos = np.bincount(gid, minlength=n_groups).astype(np.int64)
    first, last = _tied_runs(tied)
    if len(first):  # a tied run's positives count (first + last + 2) / 2 each instead of their own positions
        lo, hi = np.searchsorted(pos, first), np.searchsorted(pos, last, side="right")  # run's positives: pos[lo:hi]
        in_run = hi - lo  # (R,) positives in each run
        cum = np.r_[0, np.cumsum(pos + 1)]  # (P + 1,) sums of the positives' own positions
        delta = in_run * (first + last + 2) - 2 * (cum[hi] - cum[lo])
        g = group_of(first)
        twice += np.bincount(g, weights=delta, minlength=n_groups).astype(np.int64)
    return twice, n_pos


def auc(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y).astype(bool, copy=False), np.asarray(p)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")  # (n,)
    ps, lab = p[order], y[order]
    del order
    twice, _ = _positive_rank_sums(lab, ps[1:] == ps[:-1], lambda at: np.zeros(len(at), np.int64), 1)
    return float((twice[0] / 2 - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(y: np.ndarray, p: np.ndarray, group: np.ndarray) -> float:
    """AUC per group, averaged with the groups' sizes as weights (groups with one class left out)."""
    y, p, group = np.asarray(y).astype(bool, copy=False), np.asarray(p), np.asarray(group)
    order = np.lexsort((p, group))  # (n,) by group, then score
    g, s, lab = group[order], p[order], y[order]
    del order
    g_first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # (G,) where each group starts
    tied = s[1:] == s[:-1]
    tied &= g[1:] == g[:-1]
    del s, g
    twice, n_pos = _positive_rank_sums(lab, tied, lambda at: np.searchsorted(g_first, at, side="right") - 1,
                                       len(g_first))
    n = np.diff(np.r_[g_first, len(lab)])
    rank_sum = twice / 2 - n_pos * g_first  # positions within the group
    n_neg = n - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    auc_g = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return float(np.sum(auc_g * n[ok]) / np.sum(n[ok]))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y), np.asarray(p)
    total = 0.0
    for lo in range(0, len(y), LOGLOSS_CHUNK):  # float64 a chunk at a time
        yc = np.asarray(y[lo: lo + LOGLOSS_CHUNK], dtype=np.float64)
        pc = np.clip(np.asarray(p[lo: lo + LOGLOSS_CHUNK], dtype=np.float64), EPS, 1 - EPS)
        total += float(np.sum(yc * np.log(pc) + (1 - yc) * np.log(1 - pc)))
    return -total / len(y) if len(y) else float("nan")


def _group_ranks(y: np.ndarray, p: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, ...]:
    """0-based rank of each sample in its group (score desc, pessimistic ties) and group ids."""
    y = np.asarray(y).astype(bool)
    order = np.lexsort((y, -np.asarray(p, dtype=np.float64), np.asarray(group)))
    g = np.asarray(group)[order]
    g_new = np.r_[True, g[1:] != g[:-1]]
    g_first = np.flatnonzero(g_new)
    g_id = np.cumsum(g_new) - 1
    rank = np.arange(len(g)) - g_first[g_id]
    return rank, g_id, y[order]


def ndcg_at_k(y: np.ndarray, p: np.ndarray, group: np.ndarray, k: int) -> float:
    rank, g_id, lab = _group_ranks(y, p, group)
    gain = np.where(lab & (rank < k), 1.0 / np.log2(rank + 2.0), 0.0)
    dcg = np.bincount(g_id, weights=gain)
    n_pos = np.bincount(g_id, weights=lab).astype(np.int64)
    discounts = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))]
    idcg = discounts[np.minimum(n_pos, k)]
    ok = n_pos > 0
    return float(np.mean(dcg[ok] / idcg[ok])) if ok.any() else float("nan")


def hr_at_k(y: np.ndarray, p: np.ndarray, group: np.ndarray, k: int) -> float:
    rank, g_id, lab = _group_ranks(y, p, group)
    hit = np.bincount(g_id, weights=lab & (rank < k)) > 0
    ok = np.bincount(g_id, weights=lab) > 0
    return float(np.mean(hit[ok])) if ok.any() else float("nan")


_SIMPLE: dict[str, Callable] = {"AUC": auc, "logloss": logloss}
_GROUPED: dict[str, Callable] = {"GAUC": gauc}
_TOPK: dict[str, Callable] = {"NDCG": ndcg_at_k, "HR": hr_at_k}
METRIC_NAMES = ["AUC", "GAUC", "logloss", "NDCG@k", "HR@k"]
# Larger is better for all but these:
LOWER_IS_BETTER = {"logloss"}
# The sample subsets a metric can be restricted to (NAME:SUBSET); the sample builders fill them in
# (edgerec.data.samples.Split.metric_subsets): pairs whose positive the user had before, and the rest.
SUBSETS = ("repeat", "new")


def lower_is_better(name: str) -> bool:
    """True for metrics to minimise (logloss, logloss:repeat, ...)."""
    return parse_metric(name)[0] in LOWER_IS_BETTER


def split_subset(name: str) -> tuple[str, str | None]:
    """'GAUC:repeat' -> ('GAUC', 'repeat'); 'AUC' -> ('AUC', None). Unknown subsets are an error."""
    base, _, sub = name.partition(":")
    if sub and sub not in SUBSETS:
        raise ValueError(f"unknown metric subset {cut(sub)} in {cut(name)}; subsets: {', '.join(SUBSETS)} "
                         f"(e.g. GAUC:repeat)")
    return base, sub or None


def parse_metric(name: str) -> tuple[str, int | None]:
    """A metric name (optionally NAME:SUBSET) -> (base metric, k for @k metrics); errors name the fix."""
    name = split_subset(name)[0]
    m = re.fullmatch(r"(NDCG|HR)@(\d+)", name)
    if m:
        return m.group(1), int(m.group(2))
    if name in _SIMPLE or name in _GROUPED:
        return name, None
    raise ValueError(f"unknown metric {cut(name)}; known: {', '.join(METRIC_NAMES)} (e.g. NDCG@10)")


def evaluate(names: list[str], y: np.ndarray, p: np.ndarray, group: np.ndarray | None = None,
             subsets: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Each metric of `names` on (labels y, scores p, group ids); NAME:SUBSET on the samples where
    the boolean mask subsets[SUBSET] is True."""
    out = {}
    for name in names:
        base, k = parse_metric(name)
        whole, sub = split_subset(name)
        if sub is not None:
            if sub not in (subsets or {}):
                raise ValueError(f"metric {name}: these samples record no {sub!r} subset (the dicycle and impression "
                                 f"protocols record one); drop {name} from train.metrics")
            m = subsets[sub]
            out[name] = evaluate([whole], y[m], p[m], None if group is None else group[m])[whole] if m.any() \
                else float("nan")
            continue
        if base in _SIMPLE:
            out[name] = _SIMPLE[base](y, p)
        elif group is None:
            raise ValueError(f"metric {name} needs a group id (e.g. user)")
        elif base in _GROUPED:
            out[name] = _GROUPED[base](y, p, group)
        else:
            out[name] = _TOPK[base](y, p, group, k)
    return out
