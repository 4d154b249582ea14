"""Evidence of what a time-aware model learned, as PNGs (`edgerec explain --run DIR`).

For a trained DiCycle run:
  * time_preference.png: how the model's click logit for each item CATEGORY moves with the time of
    the request. Test samples are replayed with their target item replaced by items of one category
    and the whole sample (target time AND every history timestamp) shifted to each hour of a week,
    so every gap Δt stays exactly as it was: only absolute time changes (a first version moved the
    target alone, which mixed the Δt decay into the hour curve; docs/results.md). The logit of each
    category minus the mean over categories is plotted, which removes what is common to all items
    (under the DiCycle protocol a negative shares its positive's time, so only category x time is
    learnable). On o2o-sim the planted demand curve of each category is drawn next to it and their
    Pearson correlation is written to the JSON.
  * relative_kernel.png: the learned relative-time kernel <Φ(0), Φ(Δt)> for Δt in 0..14 days;
    a learned daily cycle shows as peaks every 24 h, a weekly one at 168 h. This kernel weights
    every frequency equally, which is not how the model reads Φ (through learned projections), so:
  * gap_response.png (o2o-sim): what the MODEL does with a gap. For each category with a planted
    relative cycle (taxi: 24/48/72 h after the last ride; groceries: 7 days), test samples are
    replayed with a target item of that category, every same-category behaviour masked out and one
    same-category behaviour put back at gap Δt before the request; the mean logit per Δt is plotted
    next to the planted demand, with their Pearson correlation. Everything else is held fixed.
Numbers behind each plot are written next to it as JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgerec.data.samples import lookup_sorted
from edgerec.errors import EdgerecError
from edgerec.features.time import SECONDS_PER_DAY, SECONDS_PER_HOUR, time_slots
from edgerec.io import atomic_path, write_json_atomic

HOURS_PER_WEEK = 168


def item_categories(samples, dataset) -> tuple[np.ndarray, list[str]]:
    """(n_items + 2,) category code per item index (padding 0, 1..V, OOV; -1 = unknown) and the names.

    Uses the dataset's item table: `category` (o2o-sim) or `genre` (MovieLens)."""
    items = dataset.items
    col = next((c for c in ("category", "genre") if items is not None and c in items.column_names), None)
    if col is None or samples.item_ids is None:
        raise EdgerecError(f"{dataset.name}: the item table has no category or genre column; "
                           "the per-category time sweep needs one (an imported dataset: import again with "
                           "--map items.category=COL or --map item.category=COL, see docs/your-data.md).")
    names_raw = np.asarray(items.column(col).to_pylist(), dtype=object)
    names = sorted({str(x) for x in names_raw if x is not None})
    code_of = {n: i for i, n in enumerate(names)}
    raw_ids = items.column("item_id").to_numpy()
    out = np.full(len(samples.item_ids) + 2, -1, dtype=np.int64)
    ok, pos = lookup_sorted(samples.item_ids, raw_ids)
    out[pos[ok] + 1] = [code_of[str(x)] if x is not None else -1 for x in names_raw[ok]]
    return out, names


def shift_sample_time(batch: dict[str, torch.Tensor], new_ts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same samples moved to request time `new_ts`, every history timestamp moved by the same
    amount (all gaps Δt unchanged); packed history slots are dropped so the model recomputes them."""
    delta = new_ts - batch["ts"]  # (B,)
    moved = {k: v for k, v in batch.items() if k != "hist_slots"}
    moved["ts"] = new_ts
    moved["hist_ts"] = torch.where(batch["hist_mask"], batch["hist_ts"] + delta[:, None], 0)  # (B, L)
    return moved


@torch.no_grad()
def target_time_sweep(model, samples, item_category: np.ndarray, names: list[str], split: str = "test",
                      n: int = 256, seed: int = 0) -> dict:
    """Mean logit per (category, hour of week), with target items of that category and Δt held fixed."""
    model.eval()
    sp = samples.splits[split]
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(sp), min(n, len(sp)), replace=False)
    base = samples.make_batch(sp, idx)
    ts = base["ts"]
    monday = ts - (time_slots(ts)["weekday"] * SECONDS_PER_DAY + ts % SECONDS_PER_DAY)  # Monday 00:00 of that week
    logits = np.full((len(names), HOURS_PER_WEEK), np.nan)
    for c in range(len(names)):
        pool = np.flatnonzero(item_category == c)
        if len(pool) == 0:
            continue
        batch = _set_items(base, samples, torch.from_numpy(rng.choice(pool, len(idx))))
        for h in range(HOURS_PER_WEEK):
            moved = shift_sample_time(batch, monday + h * SECONDS_PER_HOUR + 1800)
            logits[c, h] = model(moved)["logit"].mean().item()
    relative = logits - np.nanmean(logits, axis=0, keepdims=True)  # category x time, common part removed
    return {"categories": names, "logit_by_hour_of_week": logits.tolist(),
            "relative_by_hour_of_week": relative.tolist(),
            "relative_by_hour": relative.reshape(len(names), 7, 24).mean(1).tolist(),
            "samples": int(len(idx)), "split": split}


def _set_items(batch: dict[str, torch.Tensor], samples, item: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch with target items `item` (B,) and their side features."""
    out = dict(batch, item=item)
    for name, codes in samples.item_feats.items():
        out[f"item_{name}"] = torch.from_numpy(codes[item.numpy()])
    return out


def gap_grid(days: int = 14, step_h: float = 1.0) -> np.ndarray:
    """Gaps Δt in hours, mid-step (0.5, 1.5, ...), so Δt never equals the request time."""
    return np.arange(step_h / 2, days * 24, step_h)


@torch.no_grad()
def gap_response_sweep(model, samples, item_category: np.ndarray, names: list[str], categories: list[str],
                       days: int = 14, step_h: float = 1.0, split: str = "test", n: int = 256,
                       seed: int = 0) -> dict:
    """Mean logit per gap Δt since the user's last behaviour in the target's category.

    For each category: targets become items of that category; every history behaviour of that
    category is masked out and the most recent history slot is replaced by one behaviour of that
    category at ts - Δt (its hour-of-day slot moves with it, as it would in the data). Meant for
    order-free history models (DiCycle, COUPA), which do not read slot order. Also returns the logit
    with no same-category behaviour at all (`logit_without`), the reference level."""
    model.eval()
    sp = samples.splits[split]
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(sp), min(n, len(sp)), replace=False)
    base = samples.make_batch(sp, idx)
    base.pop("hist_slots", None)  # the model recomputes slots from hist_ts
    B, L = base["hist_item"].shape
    gaps = gap_grid(days, step_h)
    out = {"categories": [], "gap_hours": gaps.tolist(), "logit_by_gap": [], "logit_without": [],
           "samples": int(B), "split": split}
    for name in categories:
        c = names.index(name)
        pool = np.flatnonzero(item_category == c)
        if len(pool) == 0:
            continue
        batch = _set_items(base, samples, torch.from_numpy(rng.choice(pool, B)))
        same = torch.from_numpy(item_category[batch["hist_item"].numpy()] == c) & batch["hist_mask"]  # (B, L)
        batch["hist_mask"] = batch["hist_mask"] & ~same
        without = model(batch)["logit"].mean().item()
        last_item = torch.from_numpy(rng.choice(pool, B))  # (B,) the one behaviour put back
        batch["hist_item"] = batch["hist_item"].clone()
        batch["hist_item"][:, -1] = last_item
        batch["hist_mask"] = batch["hist_mask"].clone()
        batch["hist_mask"][:, -1] = True
        for feat, codes in samples.item_feats.items():
            h = batch[f"hist_{feat}"].clone()
            h[:, -1] = torch.from_numpy(codes[last_item.numpy()])
            batch[f"hist_{feat}"] = h
        curve = []
        for g in gaps:
            moved = dict(batch, hist_ts=batch["hist_ts"].clone())
            moved["hist_ts"][:, -1] = batch["ts"] - int(round(g * SECONDS_PER_HOUR))
            curve.append(model(moved)["logit"].mean().item())
        out["categories"].append(name)
        out["logit_by_gap"].append(curve)
        out["logit_without"].append(without)
    return out


def whole_minus_half_day(gap_hours, curve) -> float:
    """Mean of `curve` at whole-day gaps (1, 2, ... days) minus at half-day gaps (0.5, 1.5, ...), each
    read at the nearest grid point: how much more the model makes of a behaviour exactly k days old.
    A 24 h relative cycle shows as a clearly positive number; a recency effect alone gives about 0."""
    g, y = np.asarray(gap_hours, dtype=float), _as_float(curve)

    def at(hours: float) -> float:
        return y[int(np.argmin(np.abs(g - hours)))]

    days = range(1, max(2, int(g.max() // 24)))
    return float(np.mean([at(24.0 * d) for d in days]) - np.mean([at(24.0 * d - 12.0) for d in days]))


def _category(meta: dict):
    """A simulator Category from its JSON form in the dataset's metadata (lists back to tuples)."""
    from edgerec.data.simulator import Category

    return Category(**{**meta, "nouns": tuple(meta["nouns"]), "hours": tuple(meta["hours"]),
                       "week_peaks": tuple(tuple(p) for p in meta["week_peaks"])})


def planted_gap_curves(categories: list[dict], names: list[str], gap_hours: np.ndarray) -> dict[str, list[float]]:
    """The simulator's true demand against the gap since the last same-category click (phase 0)."""
    from edgerec.data.simulator import cycle_demand

    zeros = np.zeros_like(gap_hours)
    return {c["name"]: cycle_demand(_category(c), zeros, zeros, gap_hours).tolist()
            for c in categories if c["kind"] == "relative" and c["name"] in names}


def planted_curves(categories: list[dict], names: list[str]) -> dict[str, list[float]]:
    """The simulator's true demand per hour of week for each daily/weekly category (user phase 0)."""
    from edgerec.data.simulator import cycle_demand

    how = np.arange(HOURS_PER_WEEK) + 0.5
    return {c["name"]: cycle_demand(_category(c), how, np.zeros_like(how)).tolist()
            for c in categories if c["kind"] in ("daily", "weekly") and c["name"] in names}


def _logged_categories(dataset) -> np.ndarray | None:
    """The category of every logged event's item, or None when the log cannot give a CTR by category
    (no `category` per item, or clicks only: no exposures to divide by)."""
    e, items = dataset.events, dataset.items
    if items is None or "category" not in items.column_names or e.column("label").to_numpy().mean() >= 0.99:
        return None
    cat_of = dict(zip(items.column("item_id").to_pylist(), items.column("category").to_pylist()))
    return np.array([cat_of.get(i) for i in e.column("item_id").to_pylist()], dtype=object)


def empirical_lift(dataset, names: list[str]) -> dict[str, list[float]]:
    """Model-free reference from the LOG: per category, log(CTR in each hour of the week / the
    category's CTR) over all exposures (needs `category` per item and exposures with labels).
    What a model could learn about time x category; NaN where an hour has under 100 exposures."""
    cats = _logged_categories(dataset)
    if cats is None:
        return {}
    e = dataset.events
    ts, y = e.column("ts").to_numpy(), e.column("label").to_numpy().astype(np.float64)
    s = time_slots(ts)
    how = s["weekday"] * 24 + s["hour"]
    out = {}
    for name in names:
        m = cats == name
        base = y[m].mean()
        n = np.bincount(how[m], minlength=HOURS_PER_WEEK)
        k = np.bincount(how[m], weights=y[m], minlength=HOURS_PER_WEEK)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.where(n >= 100, np.log((k / np.maximum(n, 1)) / base), np.nan)
        out[name] = [float(v) if np.isfinite(v) else None for v in lift]  # None, not NaN: strict JSON
    return out


def _round(r) -> float | None:
    return round(float(r), 4) if np.isfinite(r) else None


def _fmt(r) -> str:
    return "n/a" if r is None or not np.isfinite(r) else f"{r:.2f}"


def _as_float(curve) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in curve], dtype=np.float64)


def _pearson(a, b) -> float | None:
    """Pearson r over the points where both are finite; None when undefined (too few points, or a
    flat curve, e.g. an untrained model's)."""
    a, b = _as_float(a), _as_float(b)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() <= 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return _round(np.corrcoef(a[ok], b[ok])[0, 1])


def cycle_agreement(sweep: dict, truth: dict[str, list[float]]) -> dict[str, float | None]:
    """Pearson correlation over the 168 hours of the week between learned and planted curves."""
    rel = np.asarray(sweep["relative_by_hour_of_week"])
    return {name: _pearson(rel[sweep["categories"].index(name)], curve) for name, curve in truth.items()}


def relative_kernel(model, days: int = 14, step_h: float = 0.5) -> dict:
    if getattr(model, "relative", None) is None:
        raise EdgerecError("this model has no relative-time encoding (use_relative_time is off or not a DiCycle).")
    dt = torch.arange(0, days * 24 + step_h, step_h)
    k = model.relative.kernel(dt)
    periods = (2 * np.pi / model.relative.omega.detach().numpy()).tolist()
    return {"dt_hours": dt.tolist(), "kernel": k.tolist(), "learned_periods_hours": sorted(periods)}


PLOTS = ("time", "kernel", "gap")  # time_preference.png, relative_kernel.png, gap_response.png


def explain_run(run_dir: str | Path, out_dir: str | Path | None = None, samples: int = 256,
                plots: tuple[str, ...] = PLOTS) -> list[Path]:
    """Write the PNGs (+ JSON) of `plots` for a DiCycle run (COUPA runs: explain_coupa's plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgerec.train.experiment import load_run

    unknown = sorted(set(plots) - set(PLOTS))
    if unknown:
        raise EdgerecError(f"unknown plot(s) {unknown}; choose from {list(PLOTS)}.")
    cfg, model, sample_set = load_run(run_dir)
    if cfg.model not in ("DiCycle", "COUPA"):
        raise EdgerecError(f"explain supports DiCycle and COUPA runs; {run_dir} is a {cfg.model} run.")
    out = Path(out_dir or Path(run_dir) / "explain")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.model == "COUPA":
        from edgerec.train.explain_coupa import explain_coupa

        return explain_coupa(cfg, model, sample_set, out, plt)
    from edgerec.data.registry import load as load_dataset

    ds = load_dataset(cfg.dataset)
    item_category, names = item_categories(sample_set, ds)
    written = []
    if "time" in plots:
        written.append(_plot_time_preference(plt, cfg, model, sample_set, ds, item_category, names, out, samples))
    if "kernel" in plots and getattr(model, "relative", None) is not None:
        written.append(_plot_relative_kernel(plt, cfg, model, out))
    if "gap" in plots:
        gaps = gap_grid()  # the sweep's own default grid: truth and log lift line up with it
        rel_truth = planted_gap_curves(ds.meta.get("categories", []), names, gaps)
        if rel_truth:
            lift = empirical_gap_lift(ds, list(rel_truth), gaps)
            written.append(_plot_gap_response(plt, cfg, model, sample_set, item_category, names, rel_truth, lift,
                                              out, samples))
    return written


def _plot_time_preference(plt, cfg, model, sample_set, ds, item_category, names, out: Path, samples: int) -> Path:
    sweep = target_time_sweep(model, sample_set, item_category, names, n=samples)
    truth = planted_curves(ds.meta["categories"], names) if "categories" in ds.meta else {}
    if truth:
        sweep["planted_by_hour_of_week"] = truth
        sweep["pearson_learned_vs_planted"] = cycle_agreement(sweep, truth)
        lift = empirical_lift(ds, list(truth))
        if lift:  # what the log itself shows: a model-free ceiling for the learned curve
            sweep["log_ctr_lift_by_hour_of_week"] = lift
            sweep["pearson_learned_vs_log_lift"] = cycle_agreement(sweep, lift)
            sweep["pearson_log_lift_vs_planted"] = {
                n: _pearson(np.nan_to_num(_as_float(lift[n]), nan=0.0), truth[n]) for n in truth}
    write_json_atomic(out / "time_preference.json", sweep)
    rel = np.asarray(sweep["relative_by_hour_of_week"])
    shown = [n for n in names if n in truth] or names[:8]
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 1.25 * len(shown) + 0.8), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], shown):
        ax.plot(np.arange(HOURS_PER_WEEK) + 0.5, rel[names.index(name)], lw=1.2, label="learned (logit, centred)")
        if name in truth:
            tw = ax.twinx()
            tw.fill_between(np.arange(HOURS_PER_WEEK) + 0.5, truth[name], color="tab:orange", alpha=0.25, lw=0)
            tw.set_yticks([])
            r = sweep["pearson_learned_vs_planted"][name]
            title = f"{name}: Pearson r = {_fmt(r)} with the planted demand (shaded)"
            if "log_ctr_lift_by_hour_of_week" in sweep:
                lift = _as_float(sweep["log_ctr_lift_by_hour_of_week"][name])
                tw2 = ax.twinx()
                tw2.plot(np.arange(HOURS_PER_WEEK) + 0.5, lift, color="tab:green", lw=0.8, alpha=0.7)
                tw2.set_yticks([])
                title += (f"; r = {_fmt(sweep['pearson_learned_vs_log_lift'][name])} with the log's CTR lift (green; "
                          f"lift vs planted r = {_fmt(sweep['pearson_log_lift_vs_planted'][name])})")
            ax.set_title(title, fontsize=8, loc="left")
        else:
            ax.set_title(name, fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
        for d in range(1, 7):
            ax.axvline(24 * d, color="grey", lw=0.4, ls=":")
    axes[-1, 0].set_xticks(np.arange(12, HOURS_PER_WEEK, 24), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
    fig.suptitle(f"{cfg.expid}: {cfg.dataset}: learned time preference per category "
                 f"({sweep['samples']} {sweep['split']} samples, Δt held fixed)", fontsize=9)
    fig.tight_layout()
    path = _save(fig, out / "time_preference.png")
    plt.close(fig)
    return path


def _plot_relative_kernel(plt, cfg, model, out: Path) -> Path:
    rk = relative_kernel(model)
    write_json_atomic(out / "relative_kernel.json", rk)
    fig, ax = plt.subplots(figsize=(10, 3.4))
    ax.plot(np.asarray(rk["dt_hours"]) / 24, rk["kernel"])
    for d in range(1, 15):
        ax.axvline(d, color="grey", lw=0.4, ls=":")
    ax.set(xlabel="Δt (days)", ylabel="<Φ(0), Φ(Δt)>", title=f"{cfg.expid}: learned relative-time kernel")
    fig.tight_layout()
    path = _save(fig, out / "relative_kernel.png")
    plt.close(fig)
    return path


def empirical_gap_lift(dataset, names: list[str], gap_hours: np.ndarray, min_exposures: int = 100) -> dict:
    """Model-free reference from the LOG: per category, log(CTR of its exposures whose user last
    clicked that category Δt earlier / the category's CTR), with Δt in bins centred on `gap_hours`
    (evenly spaced). None where a bin has fewer than `min_exposures` exposures. What any model could
    learn about the gap: the relative cycle as the log carries it."""
    cats = _logged_categories(dataset)
    if cats is None:
        return {}
    e = dataset.events
    user, ts = e.column("user_id").to_numpy().astype(np.int64), e.column("ts").to_numpy().astype(np.int64)
    y = e.column("label").to_numpy().astype(np.float64)
    step = float(gap_hours[1] - gap_hours[0])
    edges_lo = gap_hours[0] - step / 2
    big = np.int64(ts.max() - ts.min() + 2)
    out = {}
    for name in names:
        m = np.flatnonzero(cats == name)
        order = m[np.lexsort((ts[m], user[m]))]  # by user, then time
        u, t, c = user[order], ts[order] - ts.min(), y[order]
        # per user, the latest click strictly earlier in the sequence: one running max over user-offset times
        key = u * big + np.where(c == 1, t + 1, 0)  # +1: "no click yet" (0) sorts below any click
        run = np.maximum.accumulate(key)
        prev = np.concatenate([[np.int64(-1)], run[:-1]])  # exclusive: clicks before this row
        has = (prev >= u * big + 1) & (np.concatenate([[False], u[1:] == u[:-1]]))
        gap_h = (t - (prev - u * big - 1)) / 3600.0
        b = np.floor((gap_h - edges_lo) / step).astype(np.int64)
        ok = has & (b >= 0) & (b < len(gap_hours))
        n = np.bincount(b[ok], minlength=len(gap_hours))
        k = np.bincount(b[ok], weights=c[ok], minlength=len(gap_hours))
        base = c.mean()
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.where(n >= min_exposures, np.log((k / np.maximum(n, 1)) / base), np.nan)
        out[name] = [float(v) if np.isfinite(v) else None for v in lift]
    return out


def _plot_gap_response(plt, cfg, model, sample_set, item_category, names, truth, lift: dict, out: Path,
                       samples: int) -> Path:
    gs = gap_response_sweep(model, sample_set, item_category, names, list(truth), n=samples)
    gaps = np.asarray(gs["gap_hours"])
    gs["planted_by_gap"] = {k: truth[k] for k in gs["categories"]}
    gs["pearson_learned_vs_planted"] = {k: _pearson(gs["logit_by_gap"][i], truth[k])
                                        for i, k in enumerate(gs["categories"])}
    gs["whole_minus_half_day"] = {k: _round(whole_minus_half_day(gaps, gs["logit_by_gap"][i]))
                                  for i, k in enumerate(gs["categories"])}
    if lift:  # the log's own CTR lift by gap: what a model could learn at all
        gs["log_ctr_lift_by_gap"] = {k: lift[k] for k in gs["categories"]}
        gs["pearson_learned_vs_log_lift"] = {k: _pearson(gs["logit_by_gap"][i], lift[k])
                                             for i, k in enumerate(gs["categories"])}
        gs["pearson_log_lift_vs_planted"] = {k: _pearson(lift[k], truth[k]) for k in gs["categories"]}
    write_json_atomic(out / "gap_response.json", gs)
    fig, axes = plt.subplots(len(gs["categories"]), 1, figsize=(10, 1.9 * len(gs["categories"]) + 0.6),
                             sharex=True, squeeze=False)
    for ax, (i, name) in zip(axes[:, 0], enumerate(gs["categories"])):
        ax.plot(gaps / 24, gs["logit_by_gap"][i], lw=1.2, label="learned: mean logit")
        ax.axhline(gs["logit_without"][i], color="grey", lw=0.8, ls="--", label="no same-category behaviour")
        tw = ax.twinx()
        tw.fill_between(gaps / 24, truth[name], color="tab:orange", alpha=0.25, lw=0)
        tw.set_yticks([])
        title = f"{name}: Pearson r = {_fmt(gs['pearson_learned_vs_planted'][name])} with the planted demand (shaded)"
        if lift:
            tw2 = ax.twinx()
            tw2.plot(gaps / 24, _as_float(lift[name]), color="tab:green", lw=0.8, alpha=0.7)
            tw2.set_yticks([])
            title += (f"; r = {_fmt(gs['pearson_learned_vs_log_lift'][name])} with the log's CTR lift by gap (green; "
                      f"lift vs planted r = {_fmt(gs['pearson_log_lift_vs_planted'][name])})")
        ax.set_title(title, fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
        for d in range(1, 15):
            ax.axvline(d, color="grey", lw=0.4, ls=":")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("Δt since the last same-category behaviour (days)")
    fig.suptitle(f"{cfg.expid}: {cfg.dataset}: gap response ({gs['samples']} {gs['split']} samples per Δt)",
                 fontsize=9)
    fig.tight_layout()
    path = _save(fig, out / "gap_response.png")
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path
