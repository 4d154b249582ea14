"""ONNX export of stage 2, per model: the graph's size, its parity with PyTorch, and stage 2's
in-process time on either engine, side by side in one run.

    python bench/export.py                           # DIN_o2o, DiCycle_o2osim, COUPA_o2o on o2o-sim
    python bench/export.py --expids COUPA_test --dataset o2o-sim:tiny     # seconds

Each architecture is built as the experiment defines it on the dataset's samples, with seeded
UNTRAINED weights (a trained run gives the same sizes and timings; parity on trained weights is
what `edgerec export` checks every time). Parity: `edgerec.serve.export`'s own check (16
validation requests x C in {7, 200}, an empty history and an unknown item included). Timing:
`Ranker.score` per request (encoded request in, 200 scores out), torch 1 thread against ONNX
Runtime 1 thread, the engines interleaved request by request over 5 rounds of 40 validation
requests. Writes bench/results/export.json.
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

import numpy as np  # noqa: E402


def measure(expid: str, dataset: str | None, rounds: int = 5, n_requests: int = 40) -> dict:
    import torch

    from edgerec.serve import export as ex
    from edgerec.serve.onnx_ranker import OnnxRanker
    from edgerec.serve.server import ServiceRecipe, build_ranker

    torch.set_num_threads(1)
    ranker, ds = build_ranker(ServiceRecipe(store="memory", expid=expid, config=str(ROOT / "configs" / "ctr.yaml"),
                                           dataset=dataset))
    folder = Path(tempfile.mkdtemp(prefix="edgerec-export-bench-")) / "onnx"
    t0 = time.perf_counter()
    contract = ex.export_ranker(ranker, folder, quiet=True)
    export_s = time.perf_counter() - t0
    onnx = OnnxRanker(ranker, folder, threads=1)
    reqs = ex._check_requests(ranker, n_requests, 201)
    cand = [ranker.item_ids[items[:-1] - 1] for _, items in reqs]  # raw ids, C = 200
    ms = {"torch": [], "onnx": []}
    for (req, _), c in zip(reqs[:3], cand):  # warm-up
        ranker.score(req, c), onnx.score(req, c)
    for _ in range(rounds):
        for (req, _), c in zip(reqs, cand):
            for name, engine in (("torch", ranker), ("onnx", onnx)):
                t = time.perf_counter()
                engine.score(req, c)
                ms[name].append(1e3 * (time.perf_counter() - t))
    pct = {n: {"p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3)}
           for n, v in ms.items()}
    return {"expid": expid, "model": contract["model"], "dataset": ds,
            "max_len": ranker.samples.spec.max_len, "model_bytes": contract["model_bytes"],
            "parameters": int(sum(p.numel() for p in ranker.model.parameters())),
            "parity": contract["parity"], "export_seconds": round(export_s, 1), "candidates": 200,
            "stage2_ms": pct, "speedup_p50": round(pct["torch"]["p50_ms"] / pct["onnx"]["p50_ms"], 2)}


def main(argv=None) -> dict:
    from bench.nlu_latency import sgemm_gflops
    from edgerec.io import write_json_atomic
    from edgerec.train.ledger import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--expids", default="DIN_o2o,DiCycle_o2osim,COUPA_o2o")
    p.add_argument("--dataset", help="override every experiment's dataset")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "export.json"))
    a = p.parse_args(argv)
    rows = []
    for expid in a.expids.split(","):
        print(f"{expid} ...", flush=True)
        rows.append(measure(expid, a.dataset))
    r = {"benchmark": "export", "git": git_commit(), "machine": machine_info(), "sgemm_gflops": sgemm_gflops(),
         "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "weights": "seeded, untrained",
         "models": rows}
    write_json_atomic(a.out, r)
    print(markdown(r))
    return r


def markdown(r: dict) -> str:
    out = ["| experiment | model | L | parameters | model.onnx | max abs Δ logit (C = 7, 200) | same top 20 | "
           "stage 2, torch p50 / p99 | stage 2, ONNX Runtime p50 / p99 | speed-up (p50) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for m in r["models"]:
        t, o = m["stage2_ms"]["torch"], m["stage2_ms"]["onnx"]
        out.append(f"| {m['expid']} | {m['model']} | {m['max_len']} | {m['parameters']:,} | {m['model_bytes']:,} B | "
                   f"{m['parity']['max_abs_logit']:.1e} | {m['parity']['same_top20']} | {t['p50_ms']} / {t['p99_ms']} ms "
                   f"| {o['p50_ms']} / {o['p99_ms']} ms | {m['speedup_p50']}x |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
