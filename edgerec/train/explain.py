"""Evidence of what a time-aware model learned, as PNGs (`edgerec explain --run DIR`).

For a trained DiCycle run:
  * time_preference.png: the mean predicted click probability over test samples when only the
    TARGET time is moved (history fixed), by hour of day and by weekday. This is the paper's Fig. 3
    case study averaged over users: a daily cycle shows as a peaked hour curve.
  * relative_kernel.png: the learned relative-time kernel <Φ(0), Φ(Δt)> for Δt in 0..14 days;
    a learned daily cycle shows as peaks every 24 h, a weekly one at 168 h.
Numbers behind each plot are written next to it as JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgerec.errors import EdgerecError
from edgerec.features.time import SECONDS_PER_DAY, SECONDS_PER_HOUR, time_slots
from edgerec.io import atomic_path, write_json_atomic


@torch.no_grad()
def target_time_sweep(model, samples, split: str = "test", n: int = 2048, seed: int = 0) -> dict:
    """Mean predicted probability with the target time set to each hour of a week (history fixed).

    Every sample's target is moved to the same week (the one of its own timestamp), hour by hour,
    keeping the history; gaps Δt that would turn negative are clipped at 0 by the model.
    """
    model.eval()
    sp = samples.splits[split]
    idx = np.random.default_rng(seed).choice(len(sp), min(n, len(sp)), replace=False)
    batch = samples.make_batch(sp, idx)
    ts = batch["ts"]
    monday = ts - (time_slots(ts)["weekday"] * SECONDS_PER_DAY + ts % SECONDS_PER_DAY)  # Monday 00:00 of that week
    grid = np.zeros((7, 24))
    for wd in range(7):
        for h in range(24):
            moved = dict(batch, ts=monday + wd * SECONDS_PER_DAY + h * SECONDS_PER_HOUR + 1800)
            grid[wd, h] = model(moved)["y_pred"].mean().item()
    return {"by_weekday_hour": grid.tolist(), "by_hour": grid.mean(0).tolist(), "by_weekday": grid.mean(1).tolist(),
            "samples": int(len(idx)), "split": split}


def relative_kernel(model, days: int = 14, step_h: float = 0.5) -> dict:
    if getattr(model, "relative", None) is None:
        raise EdgerecError("this model has no relative-time encoding (use_relative_time is off or not a DiCycle).")
    dt = torch.arange(0, days * 24 + step_h, step_h)
    k = model.relative.kernel(dt)
    periods = (2 * np.pi / model.relative.omega.detach().numpy()).tolist()
    return {"dt_hours": dt.tolist(), "kernel": k.tolist(), "learned_periods_hours": sorted(periods)}


def explain_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgerec.train.experiment import load_run

    cfg, model, samples = load_run(run_dir)
    if cfg.model != "DiCycle":
        raise EdgerecError(f"explain supports DiCycle runs for now; {run_dir} is a {cfg.model} run.")
    out = Path(out_dir or Path(run_dir) / "explain")
    out.mkdir(parents=True, exist_ok=True)
    written = []

    sweep = target_time_sweep(model, samples)
    write_json_atomic(out / "time_preference.json", sweep)
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    ax[0].plot(range(24), sweep["by_hour"], marker="o")
    ax[0].set(xlabel="target hour of day (UTC)", ylabel="mean predicted p(click)", title="learned hour preference",
              xticks=range(0, 24, 3))
    ax[1].bar(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], sweep["by_weekday"])
    lo, hi = min(sweep["by_weekday"]), max(sweep["by_weekday"])
    ax[1].set(ylim=(lo - (hi - lo + 1e-6), hi + (hi - lo + 1e-6) * 0.3), title="learned weekday preference")
    fig.suptitle(f"{cfg.expid}: {cfg.dataset}, target-time sweep over {sweep['samples']} test samples")
    fig.tight_layout()
    written.append(_save(fig, out / "time_preference.png"))
    plt.close(fig)

    if getattr(model, "relative", None) is not None:
        rk = relative_kernel(model)
        write_json_atomic(out / "relative_kernel.json", rk)
        fig, ax = plt.subplots(figsize=(10, 3.4))
        ax.plot(np.asarray(rk["dt_hours"]) / 24, rk["kernel"])
        for d in range(1, 15):
            ax.axvline(d, color="grey", lw=0.4, ls=":")
        ax.set(xlabel="Δt (days)", ylabel="<Φ(0), Φ(Δt)>", title=f"{cfg.expid}: learned relative-time kernel")
        fig.tight_layout()
        written.append(_save(fig, out / "relative_kernel.png"))
        plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path
