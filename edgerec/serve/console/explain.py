"""Why each served item is where it is: what the console's feed page draws beside the ranking.

Everything here re-runs the SERVED model on the request the service just answered, encoded the same
way (`Ranker.encode_request`, the user's online history strictly before the request time), so an
explanation describes the model that ranked. It re-reads the store to do so: if a stream folds a new
event for this user between the two reads, the explanation sees it and the ranking did not.

  score parts      COUPA with its point process: the served relevance r = σ(z), and the two terms
                   of the intensity λ = softplus(μ + excitation) that the tower reads: the base rate
                   μ (user, item and the request's time cycles, no history) and the excitation from
                   the user's past clicks. `same_category`: how many of those clicks share the item's
                   category and the share of the point process's attention that falls on them.
  why now          the item's intensity λ (COUPA) or its served score (any other model) at each hour
                   of the next 48 h, the history held fixed: where the model expects demand for the
                   item to rise (how well λ follows the planted daily demand on o2o-sim is measured
                   by `edgerec explain`, intensity.json's Pearson r, not here).
  why this position  the user's examination curve θ_u(1..P) against the global prior curve
                   (COUPA with a position model; the served score never reads a position, this is
                   what the model learned about how deep the user looks).
"""

from __future__ import annotations

import numpy as np
import torch

from edgerec.features.time import SECONDS_PER_HOUR

WHY_NOW_HOURS = 48


def has_point_process(model) -> bool:
    return getattr(model, "time", None) is not None and hasattr(model, "candidate_outputs")


@torch.no_grad()
def score_parts(ranker, request: dict[str, torch.Tensor], items: np.ndarray, hist_category: list[str],
                item_category: list[str]) -> list[dict]:
    """Per item of `items` (C,) internal ids: its served score and, for COUPA with a point process,
    base rate, excitation, intensity and the same-category history (`hist_category`: the category of
    each real behaviour in the request's history, oldest first; `item_category`: each item's)."""
    model = ranker.model
    idx = torch.from_numpy(ranker.item_index(np.asarray(items, dtype=np.int64)))  # (C,)
    scores = torch.sigmoid(ranker.logits(request, idx)).numpy()  # (C,) what /recommend serves
    rows = [{"score": float(s)} for s in scores]
    if not has_point_process(model):
        return rows
    out = model.candidate_outputs(model.serve_user(request), idx, ranker._item_feats(idx))
    attention = out["attention"].numpy()  # (C, N) over the N real behaviours, oldest first
    base, excitation, lam = out["base_rate"].numpy(), out["excitation"].numpy(), out["log_intensity"].exp().numpy()
    hist_cat = np.asarray(hist_category, dtype=object)
    for c, row in enumerate(rows):
        same = hist_cat == item_category[c]  # (N,)
        row.update(base_rate=float(base[c]), excitation=float(excitation[c]), intensity=float(lam[c]),
                   same_category={"clicks": int(same.sum()), "of": int(len(same)),
                                  "attention": float(attention[c, same].sum()) if attention.shape[1] else 0.0})
    return rows


@torch.no_grad()
def why_now(ranker, user_id: int, ts: int, feats: dict, items: np.ndarray, hours: int = WHY_NOW_HOURS) -> dict:
    """(C, hours) intensity λ (COUPA) or served score (other models) at ts + h hours, h = 0..hours-1,
    with the history of `feats` (what was known at ts) held fixed."""
    model = ranker.model
    idx = torch.from_numpy(ranker.item_index(np.asarray(items, dtype=np.int64)))  # (C,)
    feats_idx = ranker._item_feats(idx)
    pp = has_point_process(model)
    curves = np.zeros((len(items), hours))
    for h in range(hours):
        req = ranker.encode_request(user_id, ts + h * SECONDS_PER_HOUR, feats)
        if pp:
            curves[:, h] = np.exp(model.candidate_outputs(model.serve_user(req), idx, feats_idx)["log_intensity"].numpy())
        else:
            curves[:, h] = torch.sigmoid(ranker.logits(req, idx)).numpy()
    return {"quantity": "intensity λ" if pp else "served score", "start_ts": int(ts), "step_s": SECONDS_PER_HOUR,
            "curves": curves.round(6).tolist()}


@torch.no_grad()
def examination(ranker, request: dict[str, torch.Tensor]) -> dict | None:
    """The user's examination curve θ_u(1..P) and the global prior σ(b), or None without one."""
    model = ranker.model
    if getattr(model, "examination", None) is None:
        return None
    user = model.examination_curves(request)[0].numpy()  # (P,)
    prior = torch.sigmoid(model.examination.prior).numpy()  # (P,) the curve every user starts from
    return {"positions": list(range(1, len(user) + 1)), "user": user.round(4).tolist(),
            "global": prior.round(4).tolist(), "personalized": bool(model.examination.personalized)}
