"""Training speed at RecBole's DIN architecture: where the time goes, by op, in fp32 and bf16.

    python bench/train_speed.py                          # DIN, DiCycle, COUPA x fp32, bf16
    python bench/train_speed.py --baseline 62e8d1b       # + the same DIN steps on an earlier commit

The experiments are configs/ctr.yaml's `*_ml100k_peer` blocks: RecBole 1.2.1's DIN defaults with
embedding 64 (attention MLP 256-256-256 sigmoid, head MLP 256-256-256 Dice, batch 2048, Adam 1e-3),
ml-100k leave-last-out with one random negative, L = 50; DiCycle and COUPA take the same sizes.

Each (model, precision) runs in a fresh subprocess. Its training batches are drawn once (seeded) and
built before timing; a step is forward (under bf16 autocast for bf16, as `train.precision: bf16`
does) + float32 loss + backward + Adam. Reported: the median of `--steps` timed steps after 2 warm-up
steps, inference (eval forward, no_grad) the same way, the batch-building time per batch (the
trainer builds batches on the training thread, so an epoch pays it too), peak RSS, and a
torch.profiler table of 3 more steps by op (self CPU time). `--baseline REF` checks REF out in a git
worktree and times the same DIN steps with that commit's edgerec, in the same run (this machine's
speed drifts between runs). Writes bench/results/train_speed.json and a table in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ctr.yaml"


def measure(model_name: str, precision: str, steps: int, code_root: Path, top: int = 12) -> dict:
    sys.path.insert(0, str(code_root))  # the edgerec to time: this checkout, or the baseline's worktree
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import build_model, build_samples

    cfg = load_experiment(CONFIG, f"{model_name}_ml100k_peer", ["train.progress=false"])
    torch.set_num_threads(int(os.environ.get("EDGEREC_THREADS", cfg.train.threads)))  # as the trainer
    torch.use_deterministic_algorithms(True)  # as the trainer runs
    samples = build_samples(cfg)
    model = build_model(cfg, samples.spec)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    split = samples.splits["train"]
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(split), cfg.train.batch_size, replace=False) for _ in range(steps + 5)]
    t0 = time.perf_counter()
    batches = [samples.make_batch(split, i) for i in idx]
    build_ms = (time.perf_counter() - t0) / len(batches) * 1000
    bf16 = precision == "bf16"

    def train_step(b):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(b)
        out = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}
        loss = model.loss(b, out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step(b):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(b)

    def timed(fn, mode):
        model.train(mode == "train")
        times = []
        for i, b in enumerate(batches[:steps + 2]):
            t = time.perf_counter()
            fn(b)
            if i >= 2:
                times.append(time.perf_counter() - t)
        return float(np.median(times)), times

    train_s, train_all = timed(train_step, "train")
    infer_s, infer_all = timed(infer_step, "eval")
    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[steps + 2:]:
            train_step(b)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / 3, 1),
            "share": round(e.self_cpu_time_total / total, 3), "calls_per_step": round(e.count / 3, 1)}
           for e in events[:top]]
    B = cfg.train.batch_size
    n_real = float(np.mean([b["hist_mask"].sum().item() for b in batches]))
    return {"model": model_name, "precision": precision, "batch_size": B, "L": cfg.data.max_len,
            "threads": torch.get_num_threads(), "steps": steps, "behaviours_per_batch": round(n_real),
            "train_samples_per_s": round(B / train_s), "train_ms_per_step": round(train_s * 1000, 1),
            "infer_samples_per_s": round(B / infer_s), "infer_ms_per_batch": round(infer_s * 1000, 1),
            "batch_build_ms": round(build_ms, 1),
            "epoch_samples_per_s_incl_batch_building": round(B / (train_s + build_ms / 1000)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "params": sum(p.numel() for p in model.parameters()),
            "train_ms_per_step_all": [round(t * 1000, 1) for t in train_all],
            "infer_ms_per_batch_all": [round(t * 1000, 1) for t in infer_all],
            "profile_top_ops": ops, "profile_total_ms_per_step": round(total / 1000 / 3, 1)}


def cpu_facts() -> dict:
    """The CPU model and the flags that decide bf16 speed (native bf16 dot products, AMX tiles)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), None)
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    return {"cpu_model": model, "bf16_flags": sorted(flags & {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})}


def run_one(model: str, precision: str, steps: int, code_root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", model, precision, "--steps", str(steps),
                          "--code-root", str(code_root)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{model} {precision} ({code_root}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="DIN,DiCycle,COUPA")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement (median reported)")
    p.add_argument("--baseline", metavar="REF", help="also time DIN on this git commit (a worktree), side by side")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--code-root", default=str(ROOT), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_speed.json"))
    p.add_argument("--no-docs", action="store_true", help="do not rewrite the table in docs/results.md")
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure(a.one[0], a.one[1], a.steps, Path(a.code_root))))
        return {}
    sys.path.insert(0, str(ROOT))
    from edgerec.io import write_json_atomic
    from edgerec.train.ledger import git_commit, machine_info

    threads = int(os.environ.get("EDGEREC_THREADS", 2))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.baseline:
            base = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), a.baseline], check=True)
        try:
            for model in a.models.split(","):
                for precision in a.precisions.split(","):
                    if a.baseline and model == "DIN":
                        rows.append({**run_one(model, precision, a.steps, base), "code": a.baseline})
                        print(rows[-1]["model"], precision, a.baseline, rows[-1]["train_samples_per_s"], flush=True)
                    rows.append({**run_one(model, precision, a.steps, ROOT), "code": git_commit()})
                    print(rows[-1]["model"], precision, "this", rows[-1]["train_samples_per_s"], flush=True)
        finally:
            if a.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    report = {"benchmark": "train_speed", "dataset": "ml-100k", "protocol": "leave-last-out, 1 random negative, L=50",
              "experiments": "configs/ctr.yaml *_ml100k_peer", "git": git_commit(), "baseline": a.baseline,
              "machine": {**machine_info(threads), **cpu_facts()}, "rows": rows}
    write_json_atomic(a.out, report)
    if not a.no_docs:
        from bench.docs_tables import render_train_speed

        render_train_speed(report)
    return report


if __name__ == "__main__":
    main()
