"""Single-core latency of the numpy EI-BERT runtime on 32-token sentences (issue 6 target: p50 <= 2 ms).

    python bench/nlu_latency.py runs/eibert/cross+gd_lr_0.0005-seed2.pack   # default: the headline cross, seed 1

Batch 1, BLAS threads 1, 300 sentences of exactly 32 pieces cut from the sentiment test split,
5 warm-up calls. Encoder only (ids in, pooled vector and head out) and with tokenization.
Writes bench/results/nlu_latency.json. Run it on an otherwise idle machine (the numbers in
docs/results.md were taken with every other benchmark process paused).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import sys  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sgemm_gflops(n: int = 128, m: int = 32, reps: int = 2000) -> float:
    """Single-thread float32 GFLOP/s on the runtime's typical matmul shape ((32, 128) @ (128, 128)): a
    yardstick for comparing latencies taken on different machines or phases of a shared VM."""
    import time

    import numpy as np

    a, b = np.ones((m, n), np.float32), np.ones((n, n), np.float32)
    for _ in range(50):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return round(2 * m * n * n * reps / (time.perf_counter() - t) / 1e9, 2)


def main(argv=None) -> dict:
    from bench.nlu import edge_latency_32
    from edgerec.compress.tasks import load_task
    from edgerec.io import write_json_atomic
    from edgerec.train.ledger import git_commit, machine_info

    import argparse

    from bench.nlu import headline_variant, pack_path

    default = pack_path(headline_variant("cross"), 1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pack", nargs="?", default=str(default), help="packed EI-BERT file (default: %(default)s)")
    pack = Path(p.parse_args(argv).pack)
    if not pack.is_file():
        p.error(f"{pack}: no such packed file; build one with `python bench/nlu.py` or `edgerec compress --out PATH`")
    r = {"benchmark": "nlu_latency", "pack": str(pack), "bytes": pack.stat().st_size, "git": git_commit(),
         "machine": machine_info(), "sgemm_gflops_before": sgemm_gflops(),
         "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         **edge_latency_32(pack, load_task("sentiment").text["test"], "sentiment", 300)}
    r["sgemm_gflops_after"] = sgemm_gflops()
    out = ROOT / "bench" / "results" / "nlu_latency.json"
    write_json_atomic(out, r)
    print(r)
    return r


if __name__ == "__main__":
    main()
