"""What the dedup window costs the stream: apply throughput of the feature stores with the window on
(the default, 7 days of event time) and off (every applied id kept forever).

    python bench/store_apply.py [--size small] [--repeat 3] [--batch 500]

Events: o2o-sim's log (seed 0) as wire events in time order, applied in batches of --batch with a
source and offset, as `edgerec stream` does, into a fresh store each pass. Window on and off are
interleaved pass by pass, so drift of the machine's speed hits both alike. Reports events/s (best
and median of --repeat) and how many applied ids the store keeps at the end.
Writes bench/results/store_apply.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgerec.data.simulator import preset, simulate  # noqa: E402
from edgerec.features.definition import FeatureDefinition  # noqa: E402
from edgerec.features.store import DEFAULT_DEDUP_WINDOW_S, MemoryStore, SQLiteStore  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.serve.stream import events_from_log  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402


def _kept_ids(store) -> int:
    if isinstance(store, MemoryStore):
        return len(store.applied)
    return store.db.execute("SELECT COUNT(*) FROM applied").fetchone()[0]


def _one_pass(kind: str, window: int | None, events, definition, batch: int, tmp: Path) -> tuple[float, int]:
    store = (MemoryStore(window) if kind == "memory"
             else SQLiteStore(tmp / f"{kind}-{window}-{time.time_ns()}.db", window))
    t0 = time.perf_counter()
    for k in range(0, len(events), batch):
        store.apply(events[k:k + batch], definition, "file:bench", k + batch - 1)
    return time.perf_counter() - t0, _kept_ids(store)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", help="o2o-sim preset (default %(default)s)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "store_apply.json"))
    a = p.parse_args(argv)
    events = list(events_from_log(simulate(preset(a.size, seed=0)).dataset.events))
    definition = FeatureDefinition(max_len=50, n_positions=20)
    windows = {"on (7 days)": DEFAULT_DEDUP_WINDOW_S, "off (keep every id)": None}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for kind in ("sqlite", "memory"):
            times: dict[str, list[float]] = {w: [] for w in windows}
            kept: dict[str, int] = {}
            for _ in range(a.repeat):  # interleaved: on, off, on, off, ...
                for label, window in windows.items():
                    s, kept[label] = _one_pass(kind, window, events, definition, a.batch, Path(d))
                    times[label].append(s)
            for label in windows:
                rows.append({"store": kind, "window": label, "events": len(events),
                             "events_per_s_best": round(len(events) / min(times[label])),
                             "events_per_s_median": round(len(events) / statistics.median(times[label])),
                             "seconds": [round(x, 3) for x in times[label]], "ids_kept_at_end": kept[label]})
                print(rows[-1], flush=True)
    report = {"benchmark": "store_apply", "dataset": f"o2o-sim:{a.size} (seed 0)", "batch": a.batch,
              "repeat": a.repeat, "git": git_commit(), "machine": machine_info(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    write_json_atomic(a.out, report)
    return report


if __name__ == "__main__":
    main()
