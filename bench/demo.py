"""How long `make demo` takes, step by step, and what its models score (the main job, issue 23).

    python bench/demo.py                      # a fresh working folder; EDGEREC_CACHE as set (see below)
    EDGEREC_CACHE=$(mktemp -d) python bench/demo.py   # a first run on a new machine: nothing cached

Runs edgerec/demo.py's loop (`edgerec demo --no-wait`) into a new folder, so every variant trains
(nothing is loaded from an earlier run), and writes bench/results/demo.json: wall seconds per step,
the truth metrics of COUPA, PAL and no-position (one seed, o2o-sim:small, COUPA_demo), the machine
and the git commit, and whether the EI-BERT teacher was cached before the run (the first run on a
machine fine-tunes it). Its table goes to docs/results.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs_tables import replace_block  # noqa: E402
from edgerec.data.assets import cache_dir  # noqa: E402
from edgerec.demo import run_loop  # noqa: E402
from edgerec.io import write_json_atomic  # noqa: E402
from edgerec.train.ledger import git_commit, machine_info  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo.json"))
    a = p.parse_args(argv)
    cache = Path(cache_dir())
    cached_before = sorted(str(x.relative_to(cache)) for x in cache.glob("*")) if cache.exists() else []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as work:
        s = run_loop(ROOT / "configs" / "ctr.yaml", Path(work) / "demo", port=0)
    truth = {name: {"relevance_auc": round(t["relevance_auc"], 4), "ndcg@10": round(t["request_ndcg@10"], 4),
                    "exam_mae": {k: v["mae"] for k, v in (t.get("examination_shape") or {}).items()}}
             for name, t in s["truth"].items()}
    report = {"benchmark": "demo", "started": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="seconds"),
              "git": git_commit(), "machine": machine_info(), "dataset": "o2o-sim:small", "expid": "COUPA_demo",
              "seed": 2024, "cache_dir": str(cache), "cache_before": cached_before,
              "fresh_cache": not cached_before, "seconds": s["seconds"], "truth": truth,
              "logged_test_auc": round(s["test_auc"], 4)}
    write_json_atomic(a.out, report)
    render(report)
    return report


def render(r: dict) -> None:
    sec = r["seconds"]
    steps = " | ".join(f"{k} {v:.0f}" for k, v in sec.items() if k != "total")
    rows = "\n".join(f"| {name} | {t['relevance_auc']:.4f} | {t['ndcg@10']:.4f} | "
                     f"{' / '.join(f'{x:.3f}' for x in t['exam_mae'].values()) or 'n/a'} |"
                     for name, t in sorted(r["truth"].items(), key=lambda kv: -kv[1]["relevance_auc"]))
    block = (f"| variant | relevance AUC (truth) | NDCG@10 (truth) | exam. curve MAE deep / medium / shallow |\n"
             f"|---|---|---|---|\n{rows}\n\n"
             f"Wall time {sec['total']:.0f} s in all ({'nothing cached: a first run on this machine' if r['fresh_cache'] else 'EI-BERT teacher already cached'}); "
             f"by step (s): {steps}.\n\n"
             f"`python bench/demo.py` (the `edgerec demo` loop into a new folder), o2o-sim:small, COUPA_demo, seed "
             f"{r['seed']}, one seed per variant; {r['machine']['cpu_count']} CPU cores "
             f"({r['machine']['processor']}), git {r['git']}, {r['started']}; bench/results/demo.json.")
    replace_block("demo", block)


if __name__ == "__main__":
    main()
