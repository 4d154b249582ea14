"""Evaluation against the simulator's ground truth (o2o-sim), where real logs cannot tell.

Logged clicks mix relevance with examination (a click needs both), so a model can score well on
logged clicks by learning the logging policy's positions. On o2o-sim every exposure carries its
true relevance and examination probability, and every user a true examination curve, so:

  relevance_auc         AUC of the served (position-free) score against labels drawn from the TRUE
                        relevance, y* ~ Bernoulli(r_true): the clicks we would see if every item were
                        examined. Averaged over `draws` seeded draws.
  request_ndcg          NDCG@k of each feed request re-ranked by the served score, with the true
                        relevance as graded gain: how good the feed is when ranked without positions.
  examination_spearman  per user segment, Spearman correlation between the mean learned examination
                        curve θ_u(1..P) and the mean true curve ρ^(p-1) of that segment's users.
  examination_shape     the same curves relative to position 1: mean absolute error, and the value
                        at the last position (how much deeper a segment browses).
"""

from __future__ import annotations

import numpy as np
import torch

from edgerec.errors import EdgerecError
from edgerec.train.metrics import auc


def relevance_auc(scores: np.ndarray, true_relevance: np.ndarray, draws: int = 5, seed: int = 0) -> float:
    rng = np.random.default_rng([seed, 8191])  # its own stream: never the one that made the scores
    vals = []
    for _ in range(draws):
        y = (rng.random(len(true_relevance)) < true_relevance).astype(np.float64)
        vals.append(auc(y, scores))
    return float(np.mean(vals))


def request_ndcg(scores: np.ndarray, gains: np.ndarray, request_id: np.ndarray, k: int = 10) -> float:
    """Mean over requests of DCG@k(order by score) / DCG@k(order by gain); ties in score broken
    pessimistically (the lower gain first), so a constant score earns no credit."""
    order = np.lexsort((gains, -scores, request_id))  # by request, score desc, then gain asc (pessimistic)
    req, g = request_id[order], gains[order]
    starts = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
    rank = np.arange(len(req)) - np.repeat(starts, np.diff(np.r_[starts, len(req)]))
    disc = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    dcg = np.add.reduceat(g * disc, starts)
    ideal_order = np.lexsort((-gains, request_id))
    gi = gains[ideal_order]
    idcg = np.add.reduceat(gi * disc, starts)  # same request sizes, same rank layout
    ok = idcg > 0
    return float((dcg[ok] / idcg[ok]).mean())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def examination_spearman(curves: np.ndarray, user_segment: np.ndarray, true_curves: np.ndarray) -> dict:
    """curves (n, P) learned θ per sample, user_segment (n,), true_curves (n, P') -> {segment: ρ_s}.

    Weak on its own: any decreasing curve scores 1 against a decreasing truth (our prior starts
    decreasing), so `examination_shape` is reported next to it."""
    P = min(curves.shape[1], true_curves.shape[1])
    out = {}
    for seg in sorted(set(user_segment.tolist())):
        m = user_segment == seg
        out[str(seg)] = round(spearman(curves[m, :P].mean(0), true_curves[m, :P].mean(0)), 4)
    return out


def examination_shape(curves: np.ndarray, user_segment: np.ndarray, true_curves: np.ndarray) -> dict:
    """Per segment, the curve relative to position 1, θ(p)/θ(1), learned vs true: the mean absolute
    error over positions and both values at the last position (deep browsers should keep more)."""
    P = min(curves.shape[1], true_curves.shape[1])
    out = {}
    for seg in sorted(set(user_segment.tolist())):
        m = user_segment == seg
        learned = curves[m, :P].mean(0)
        true = true_curves[m, :P].mean(0)
        learned, true = learned / learned[0], true / true[0]
        out[str(seg)] = {"mae": round(float(np.abs(learned - true).mean()), 4),
                         "learned_last": round(float(learned[-1]), 4), "true_last": round(float(true[-1]), 4)}
    return out


@torch.no_grad()
def evaluate_against_truth(model, samples, dataset, split: str = "test", batch_size: int = 8192,
                           k: int = 10) -> dict:
    """All three checks for a model trained on o2o-sim with the impression protocol."""
    truth = (dataset.extras or {}).get("truth_exposures")
    users = (dataset.extras or {}).get("truth_users")
    sp = samples.splits[split]
    if truth is None or users is None or sp.event_row is None:
        raise EdgerecError(f"{dataset.name}: ground truth needs o2o-sim and the impression protocol.")
    model.eval()
    scores, curves = [], []
    for start in range(0, len(sp), batch_size):
        idx = np.arange(start, min(start + batch_size, len(sp)))
        batch = samples.make_batch(sp, idx)
        batch.pop("position")  # served without it
        scores.append(model(batch)["y_pred"].numpy())
        if getattr(model, "examination", None) is not None:
            curves.append(model.examination_curves(batch).numpy())
    score = np.concatenate(scores)
    rows = sp.event_row
    rel = truth.column("true_relevance").to_numpy()[rows].astype(np.float64)
    req = dataset.events.column("request_id").to_numpy()[rows]
    out = {"relevance_auc": relevance_auc(score, rel), f"request_ndcg@{k}": request_ndcg(score, rel, req, k),
           "samples": int(len(sp))}
    if curves:
        raw_user = dataset.events.column("user_id").to_numpy()[rows]
        seg_of = dict(zip(users.column("user_id").to_pylist(), users.column("segment").to_pylist()))
        true_of = dict(zip(users.column("user_id").to_pylist(),
                           users.column("exam_curve").to_numpy(zero_copy_only=False)))
        seg = np.array([seg_of[u] for u in raw_user])
        true = np.stack([true_of[u] for u in raw_user])
        learned = np.concatenate(curves)
        out["examination_spearman"] = examination_spearman(learned, seg, true)
        out["examination_shape"] = examination_shape(learned, seg, true)
    return out
