"""Training and inference throughput and peak memory: DIN vs DiCycle at L = 50 and 200.

    python bench/throughput.py                 # batch 1024, 2 torch threads, ml-100k samples

Each (model, L) runs in a fresh subprocess so its peak RSS is its own. Training = forward +
backward + Adam step on shuffled training batches; inference = eval-mode forward under no_grad on
test-split-shaped batches; each is timed `--repeat` times and the best pass is reported (all
passes are kept in the JSON). Batches are built before timing (batch gathering is measured separately
as `batch_build_ms`). Writes bench/results/throughput.json. Targets (issue 3): DiCycle training
>= 0.5x DIN's samples/s; DiCycle inference >= 20,000 samples/s at L = 50.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(model_name: str, L: int, batch_size: int, threads: int, steps: int, repeat: int = 3) -> dict:
    import numpy as np
    import torch

    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import build_model, build_samples

    torch.set_num_threads(threads)
    cfg = load_experiment(ROOT / "configs" / "ctr.yaml", f"{model_name}_ml100k",
                          [f"data.max_len={L}", "train.progress=false"])
    samples = build_samples(cfg)
    model = build_model(cfg, samples.spec)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    split = samples.splits["train"]
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(split), batch_size, replace=False) for _ in range(steps + 3)]
    t0 = time.perf_counter()
    batches = [samples.make_batch(split, i, L) for i in idx]
    build_ms = (time.perf_counter() - t0) / len(batches) * 1000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_times, inf_times = [], []
    for _ in range(repeat):  # best of `repeat`: this shared machine's speed drifts between runs
        model.train()
        for i, b in enumerate(batches):
            if i == 3:
                t_train = time.perf_counter()
            out = model(b)
            loss = model.loss(b, out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_times.append(time.perf_counter() - t_train)
        model.eval()
        with torch.no_grad():
            for i, b in enumerate(batches):
                if i == 3:
                    t_inf = time.perf_counter()
                model(b)
        inf_times.append(time.perf_counter() - t_inf)
    train_s, inf_s = min(train_times), min(inf_times)
    return {"model": model_name, "L": L, "batch_size": batch_size, "threads": threads, "steps": steps,
            "train_samples_per_s": round(steps * batch_size / train_s), "train_ms_per_step": round(train_s / steps * 1000, 1),
            "infer_samples_per_s": round(steps * batch_size / inf_s), "infer_ms_per_batch": round(inf_s / steps * 1000, 1),
            "batch_build_ms": round(build_ms, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_training_mb": round(rss_before / 1024),
            "params": sum(p.numel() for p in model.parameters()), "repeat": repeat,
            "train_ms_per_step_all": [round(t / steps * 1000, 1) for t in train_times],
            "infer_ms_per_batch_all": [round(t / steps * 1000, 1) for t in inf_times]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="DIN,DiCycle")
    p.add_argument("--lens", default="50,200")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported, all are kept")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "L"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "throughput.json"))
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure(a.one[0], int(a.one[1]), a.batch_size, a.threads, a.steps, a.repeat)))
        return {}
    from edgerec.io import write_json_atomic
    from edgerec.train.ledger import git_commit, machine_info

    rows = []
    for L in a.lens.split(","):
        for m in a.models.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", m, L, "--batch-size", str(a.batch_size),
                                  "--threads", str(a.threads), "--steps", str(a.steps), "--repeat", str(a.repeat)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    by = {(r["model"], r["L"]): r for r in rows}
    checks = {}
    for L in {r["L"] for r in rows}:
        if ("DIN", L) in by and ("DiCycle", L) in by:
            checks[f"DiCycle/DIN train ratio L={L}"] = round(by["DiCycle", L]["train_samples_per_s"] / by["DIN", L]["train_samples_per_s"], 3)
    report = {"benchmark": "throughput", "dataset": "ml-100k", "git": git_commit(), "machine": machine_info(a.threads),
              "rows": rows, "checks": checks}
    write_json_atomic(a.out, report)
    from bench.docs_tables import render_throughput

    render_throughput(report)
    print(json.dumps(checks, indent=1))
    return report


if __name__ == "__main__":
    main()
