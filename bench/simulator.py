"""O2O simulator generation speed: events per second for each size preset (seed 0, 2 cores).

    python bench/simulator.py [--sizes tiny,small,medium]

Writes bench/results/simulator.json: exposures, clicks, CTR, seconds (best of --repeat), events/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgerec.data.simulator import preset, simulate  # noqa: E402
from bench.docs_tables import render_simulator  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="tiny,small,medium")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "simulator.json"))
    a = p.parse_args(argv)
    rows = []
    for size in a.sizes.split(","):
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            sim = simulate(preset(size, seed=0))
            times.append(time.perf_counter() - t0)
        label = sim.dataset.events.column("label").to_numpy()
        rows.append({"size": size, "users": sim.config.n_users, "items": sim.config.n_items,
                     "days": sim.config.n_days, "exposures": int(len(label)), "clicks": int(label.sum()),
                     "ctr": round(float(label.mean()), 4), "seconds_best": round(min(times), 3),
                     "events_per_second": round(len(label) / min(times))})
        print(rows[-1], flush=True)
        del sim
    report = {"benchmark": "simulator", "git": git_commit(), "machine": machine_info(), "repeat": a.repeat,
              "rows": rows}
    write_json_atomic(a.out, report)
    render_simulator(report)
    return report


if __name__ == "__main__":
    main()
