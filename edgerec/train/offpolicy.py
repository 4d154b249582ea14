"""Open Bandit checks for position-aware models: the position curve and the off-policy value.

Open Bandit's `random` policy shows random items at random positions 1-3, so on its logs
  * the empirical CTR by position, relative to position 1, estimates the examination curve
    θ(p)/θ(1) (relevance is independent of position there), with bootstrap intervals;
  * the value of any new ranking policy is estimated without bias by inverse propensity scoring:
        V_IPS(π) = mean over logged rounds of  click · 1[π puts the logged item at the logged position] / pscore.
Our policy ranks every item of the round's campaign by the served score (no position) and fills
positions 1-3 with the top three.
"""

from __future__ import annotations

import numpy as np
import torch


def bootstrap_ci(values: np.ndarray, stat, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple:
    rng = np.random.default_rng(seed)
    n = len(values)
    boots = np.array([stat(values[rng.integers(0, n, n)]) for _ in range(n_boot)])
    return float(stat(values)), float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))


def position_ctr_curve(position: np.ndarray, click: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Empirical CTR(p)/CTR(1) with bootstrap CIs (rounds resampled), for p = 1..max."""
    P = int(position.max())
    data = np.stack([position, click], 1).astype(np.float64)

    def ratio(p):
        def f(d):
            c1 = d[d[:, 0] == 1, 1].mean()
            return d[d[:, 0] == p, 1].mean() / c1 if c1 > 0 else np.nan
        return f

    out = {"positions": list(range(1, P + 1)), "ctr": [], "ratio": [], "ratio_lo": [], "ratio_hi": []}
    for p in range(1, P + 1):
        out["ctr"].append(float(click[position == p].mean()))
        r, lo, hi = bootstrap_ci(data, ratio(p), n_boot, seed)
        out["ratio"].append(r)
        out["ratio_lo"].append(lo)
        out["ratio_hi"].append(hi)
    return out


@torch.no_grad()
def ranking_slates(model, samples, split, rows: np.ndarray, candidates: dict, campaign: np.ndarray,
                   slate: int = 3) -> np.ndarray:
    """For each sample row, the item indices our policy shows at positions 1..slate: (n, slate).

    candidates: campaign -> array of item indices; campaign: (n,) campaign of each row."""
    model.eval()
    out = np.zeros((len(rows), slate), dtype=np.int64)
    for i, row in enumerate(rows):
        items = candidates[campaign[i]]
        base = samples.make_batch(split, np.array([row]))
        base.pop("position", None)
        batch = {k: v.expand(len(items), *v.shape[1:]) for k, v in base.items()}
        batch["item"] = torch.from_numpy(items)
        for name, codes in samples.item_feats.items():
            batch[f"item_{name}"] = torch.from_numpy(codes[items])
        score = model(batch)["y_pred"].numpy()
        out[i] = items[np.argsort(-score, kind="stable")[:slate]]
    return out


def ips_value(slates: np.ndarray, item: np.ndarray, position: np.ndarray, click: np.ndarray,
              pscore: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """V_IPS with a bootstrap CI; also the logged policy's own value (mean click) for reference."""
    match = slates[np.arange(len(item)), position - 1] == item
    w = click * match / pscore
    v, lo, hi = bootstrap_ci(w, np.mean, n_boot, seed)
    logged, llo, lhi = bootstrap_ci(click.astype(np.float64), np.mean, n_boot, seed)
    return {"ips": v, "ips_lo": lo, "ips_hi": hi, "logged": logged, "logged_lo": llo, "logged_hi": lhi,
            "matches": int(match.sum()), "rounds": int(len(item))}
