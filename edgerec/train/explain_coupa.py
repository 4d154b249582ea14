"""What a trained COUPA learned, as PNGs (`edgerec explain --run DIR` on a COUPA run).

  * intensity.png: for a few test users, the point process's log λ for each item category over the
    next 7 days after their last test request, history fixed (the recurring demand COUPA is for).
    Each category's curve is the mean over a few of its items. On o2o-sim the planted daily/weekly
    demand is correlated with it (Pearson over the hourly grid, averaged over the users shown).
  * examination.png: the learned examination curves θ_u(1..P), averaged per user segment (the true
    browsing segment on o2o-sim, drawn next to the truth; otherwise the first user feature).
Numbers behind each plot are written next to it as JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgerec.errors import EdgerecError
from edgerec.features.time import SECONDS_PER_HOUR, time_slots
from edgerec.io import write_json_atomic

HOURS = 7 * 24


@torch.no_grad()
def intensity_curves(model, samples, item_category: np.ndarray, names: list[str], users: int = 3,
                     items_per_category: int = 5, seed: int = 0) -> dict:
    """log λ (users, categories, 168 hours) from each chosen user's last test request onwards."""
    if model.time is None:
        raise EdgerecError("this COUPA run has no point process (use_point_process: false)")
    model.eval()
    sp = samples.splits["test"]
    hist_len = sp.hist_end - sp.hist_start
    last = {}
    for i in np.argsort(sp.ts):  # each user's last test request
        last[int(sp.user[i])] = i
    rows = sorted(last.values(), key=lambda i: -hist_len[i])[:users]  # the users with most history
    rng = np.random.default_rng(seed)
    out = np.zeros((len(rows), len(names), HOURS))
    starts = []
    for u, row in enumerate(rows):
        base = samples.make_batch(sp, np.array([row]))
        t0 = int(base["ts"][0]) // SECONDS_PER_HOUR * SECONDS_PER_HOUR
        starts.append(t0)
        grid = torch.tensor([t0 + h * SECONDS_PER_HOUR for h in range(HOURS)])
        for c in range(len(names)):
            pool = np.flatnonzero(item_category == c)
            if len(pool) == 0:
                out[u, c] = np.nan
                continue
            picks = rng.choice(pool, min(items_per_category, len(pool)), replace=False)
            acc = np.zeros(HOURS)
            for item in picks:
                batch = {k: v.expand(HOURS, *v.shape[1:]) for k, v in base.items()}
                batch["ts"] = grid
                batch["item"] = torch.full((HOURS,), int(item))
                for name, codes in samples.item_feats.items():
                    batch[f"item_{name}"] = torch.full((HOURS,), int(codes[item]))
                acc += model.relevance(batch)["log_intensity"].numpy()
            out[u, c] = acc / len(picks)
    raw = [int(samples.user_ids[sp.user[r] - 1]) for r in rows]
    if samples.id_maps:  # an imported dataset: the user's own ids, as the service speaks them
        from edgerec.data.imports import IdMap

        raw = IdMap.from_table(samples.id_maps["id_map_user"]).decode(np.asarray(raw))
    return {"categories": names, "users": raw,
            "start_ts": starts, "log_intensity": out.tolist()}


def intensity_agreement(curves: dict, categories_meta: list[dict]) -> dict[str, float]:
    """Pearson r between learned log λ and the planted daily/weekly demand, mean over users."""
    from edgerec.train.explain import planted_curves

    truth = planted_curves(categories_meta, curves["categories"])
    lam = np.asarray(curves["log_intensity"])  # (U, C, 168)
    out = {}
    for name, week in truth.items():
        c = curves["categories"].index(name)
        rs = []
        for u, t0 in enumerate(curves["start_ts"]):
            s = time_slots(np.array([t0]))
            how0 = int(s["weekday"][0]) * 24 + int(s["hour"][0])  # hour of week of the first grid point
            planted = np.roll(np.asarray(week), -how0)  # planted demand on the same 168-hour grid
            rs.append(np.corrcoef(lam[u, c], planted)[0, 1])
        out[name] = round(float(np.mean(rs)), 4)
    return out


@torch.no_grad()
def segment_examination(model, samples, dataset, n: int = 4096) -> dict:
    """Mean learned θ(1..P) per segment over test samples, with the true mean curve when known."""
    sp = samples.splits["test"]
    idx = np.arange(min(n, len(sp)))
    batch = samples.make_batch(sp, idx)
    curves = model.examination_curves(batch).numpy()  # (n, P)
    raw_user = samples.user_ids[sp.user[idx] - 1]
    truth = (dataset.extras or {}).get("truth_users")
    out: dict = {"positions": list(range(1, curves.shape[1] + 1)), "learned": {}, "true": {}}
    if truth is not None:
        seg_of = dict(zip(truth.column("user_id").to_pylist(), truth.column("segment").to_pylist()))
        true_of = dict(zip(truth.column("user_id").to_pylist(), truth.column("exam_curve").to_numpy(zero_copy_only=False)))
        seg = np.array([seg_of[u] for u in raw_user])
        true = np.stack([true_of[u] for u in raw_user])
        out["segment_by"] = "true browsing segment (o2o-sim)"
    else:
        name = next(iter(samples.user_feats), None)
        if name is None:
            seg = np.array(["all"] * len(idx))
        else:
            seg = np.array([f"{name}={c}" for c in samples.user_feats[name][sp.user[idx]]])
        true = None
        out["segment_by"] = name or "none"
    for s in sorted(set(seg.tolist())):
        m = seg == s
        out["learned"][s] = curves[m].mean(0).tolist()
        if true is not None:
            out["true"][s] = true[m, :curves.shape[1]].mean(0).tolist()
    return out


def explain_coupa(cfg, model, sample_set, out: Path, plt) -> list[Path]:
    from edgerec.data.registry import load as load_dataset
    from edgerec.train.explain import _save, item_categories

    ds = load_dataset(cfg.dataset)
    written = []
    if model.time is not None:
        item_category, names = item_categories(sample_set, ds)
        curves = intensity_curves(model, sample_set, item_category, names)
        if "categories" in ds.meta:
            curves["pearson_learned_vs_planted"] = intensity_agreement(curves, ds.meta["categories"])
        write_json_atomic(out / "intensity.json", curves)
        lam = np.asarray(curves["log_intensity"])
        fig, axes = plt.subplots(len(curves["users"]), 1, figsize=(11, 2.4 * len(curves["users"])), squeeze=False)
        for u, ax in enumerate(axes[:, 0]):
            for c, name in enumerate(names):
                ax.plot(np.arange(HOURS), lam[u, c], lw=1, label=name)
            ax.set_title(f"user {curves['users'][u]}: log λ per category over the next 7 days", fontsize=8, loc="left")
            for d in range(1, 7):
                ax.axvline(24 * d, color="grey", lw=0.4, ls=":")
            ax.set_xticks(np.arange(0, HOURS + 1, 24), [f"+{d}d" for d in range(8)])
        axes[0, 0].legend(fontsize=6, ncol=4, loc="upper right")
        fig.suptitle(f"{cfg.expid}: {cfg.dataset}: point-process intensity (history fixed)", fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, out / "intensity.png"))
        plt.close(fig)
    if model.examination is not None:
        ex = segment_examination(model, sample_set, ds)
        write_json_atomic(out / "examination.json", ex)
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for i, (s, curve) in enumerate(ex["learned"].items()):
            ax.plot(ex["positions"], curve, marker="o", color=f"C{i}", label=f"{s} (learned)")
            if s in ex["true"]:
                ax.plot(ex["positions"], ex["true"][s], ls="--", color=f"C{i}", label=f"{s} (true)")
        ax.set(xlabel="display position", ylabel="examination probability θ(p)",
               title=f"{cfg.expid}: learned examination by {ex['segment_by']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out / "examination.png"))
        plt.close(fig)
    return written
