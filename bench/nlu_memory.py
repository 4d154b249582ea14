"""The edge model's memory and latency: the float32 runtime (every weight dequantized at load, the
runtime before December 2026) against the int8 runtime (weights stay int8; one layer at a time is
cast into a shared scratch buffer) and the ONNX export on ONNX Runtime (`edgerec export --pack`,
int8 QDQ weights, 1 intra-op thread), side by side in one run.

    python bench/nlu_memory.py                       # the headline cross pack if it is on disk, else a shape twin
    python bench/nlu_memory.py runs/eibert/<name>.pack
    python bench/nlu_memory.py --twin                # always the shape twin (see below)

Per runtime: the file's size; resident weight bytes (every array the loaded model holds, the
scratch buffer included: `EdgeModel.resident_weight_bytes`); the Python heap that loading adds
(tracemalloc, tokenizer included); encoder latency per 32-piece sentence (batch 1, BLAS threads 1,
300 sentences, 5 interleaved rounds, p50/p99); and agreement of the runtimes' predictions on
every task's test split (max |Δ logit|, share of equal labels; float32 and ONNX each against int8).
For ONNX Runtime, whose arrays are not Python's: the .onnx file's size and the process RSS that
creating the session added (VmRSS before and after, /proc/self/status).

The shape twin: when no trained headline pack is on disk (a fresh machine: its teachers and
general distillation take about an hour), a student of the headline's exact shape (vocabulary
7,000, hidden 128, 4 layers, 4 heads, FFN 512, 64 positions, four tasks) is distilled for one epoch
on 200 sentences per split with untuned teachers. Memory and latency depend on the shapes only;
its accuracy is meaningless and not reported, the agreement between runtimes is.
Writes bench/results/nlu_memory.json.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RUNTIMES = ("float32", "int8")
TWIN = ROOT / "runs" / "bench" / "eibert_shape_twin.pack"


def shape_twin(path: Path = TWIN) -> Path:
    """A student of the headline shape, barely trained (module doc); built once, then reused."""
    if path.is_file():
        return path
    from edgerec.compress.pipeline import CompressConfig, build

    print(f"building the shape twin {path} (one short distillation) ...", flush=True)
    build(CompressConfig(method="kd", teacher_epochs=0, limit_per_split=200, vocab_floor=7000, distill={"epochs": 1}),
          path,
          log=lambda *a: None, progress=False)
    return path


def load_measured(pack: Path, weights: str):
    """The model and what loading it added to the Python heap (tracemalloc, bytes)."""
    from edgerec.serve.edge.runtime import EdgeModel

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    model = EdgeModel.load(pack, weights)
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return model, heap


class OnnxRunner:
    """The exported graph behind the runtime's two calls the benchmark makes (`_encode`, `heads`), so
    that one loop times all three side by side. `_encode` runs the whole graph (encoder and every
    head) and `heads[task]` picks the task's output: the graph has no pooled output."""

    def __init__(self, onnx_path: Path, tasks: dict):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1  # as the numpy runtimes' BLAS threads
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.tasks = tasks
        self.names = [o.name for o in self.session.get_outputs()]
        self.heads = {t: (lambda out, t=t: out[self.names.index(f"logits_{t}")]) for t in tasks}

    def _encode(self, ids: np.ndarray, mask: np.ndarray):
        return self.session.run(None, {"ids": ids.astype(np.int64), "mask": mask.astype(np.int64)})


_SESSION_RSS = """
import sys
from pathlib import Path
import numpy as np
import onnxruntime as ort
def rss():
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
before = rss()
so = ort.SessionOptions(); so.intra_op_num_threads = so.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
ids = np.ones((1, 32), np.int64)
s.run(None, {"ids": ids, "mask": ids})
print(rss() - before)
"""


def load_onnx(pack: Path, out_dir: Path, tasks: dict):
    """Export the pack (edgerec export --pack) and open it: -> (runner, .onnx bytes, RSS that opening
    the session and one 32-piece run add in a fresh process, onnxruntime already imported: in this
    process the export's freed memory makes an RSS difference meaningless)."""
    import subprocess

    from edgerec.compress.onnx_export import export_edge_onnx

    export_edge_onnx(pack, out_dir, log=lambda *a: None)
    model = out_dir / "eibert.onnx"
    rss = int(subprocess.run([sys.executable, "-c", _SESSION_RSS, str(model)], capture_output=True, text=True,
                             check=True).stdout.split()[-1])
    return OnnxRunner(model, tasks), model.stat().st_size, rss


def latency(models: dict, sents: list[np.ndarray], task: str, rounds: int = 5) -> dict:
    """Encoder + head per sentence, the runtimes interleaved sentence by sentence (a slow phase of a
    shared machine hits both alike)."""
    mask = np.ones((1, 32), dtype=np.int64)
    ms = {w: [] for w in models}
    for m in models.values():
        for x in sents[:5]:
            m.heads[task](m._encode(x, mask))  # warm-up
    for _ in range(rounds):
        for x in sents:
            for w, m in models.items():
                t0 = time.perf_counter()
                m.heads[task](m._encode(x, mask))
                ms[w].append(1e3 * (time.perf_counter() - t0))
    return {w: {"p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3)}
            for w, v in ms.items()}


def agreement(models: dict, tasks: list[str]) -> dict:
    """Per task's test split: max |Δ logit| and the share of equal predictions, int8 vs float32."""
    from edgerec.compress.tasks import load_task

    out = {}
    int8 = models["int8"]
    for task in tasks:
        texts = load_task(task).text["test"]
        y = np.asarray(load_task(task).y["test"])
        ref = np.concatenate([int8.logits(texts[i: i + 64], task) for i in range(0, len(texts), 64)])
        out[task] = {"sentences": len(texts), "accuracy_int8": round(float((ref.argmax(1) == y).mean()), 6)}
        for name, m in models.items():
            if name == "int8":
                continue
            if isinstance(m, OnnxRunner):
                batches = [int8.tok.batch(texts[i: i + 64], int8.max_len) for i in range(0, len(texts), 64)]
                a = np.concatenate([m.heads[task](m._encode(ids, mask)) for ids, mask in batches])
            else:
                a = np.concatenate([m.logits(texts[i: i + 64], task) for i in range(0, len(texts), 64)])
            out[task][name] = {"max_abs_logit": float(np.abs(a - ref).max()),
                               "same_label": round(float((a.argmax(1) == ref.argmax(1)).mean()), 6),
                               "accuracy": round(float((a.argmax(1) == y).mean()), 6)}
    return out


def main(argv=None) -> dict:
    from bench.nlu import headline_variant, pack_path, sentences_32
    from bench.nlu_latency import sgemm_gflops
    from edgerec.compress.tasks import load_task
    from edgerec.io import write_json_atomic
    from edgerec.train.ledger import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pack", nargs="?", help="packed EI-BERT file (default: the headline cross pack, else the twin)")
    p.add_argument("--twin", action="store_true", help="measure the shape twin even if a headline pack exists")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "nlu_memory.json"))
    a = p.parse_args(argv)
    if a.pack:
        pack, kind = Path(a.pack), "given"
    else:
        try:
            headline = pack_path(headline_variant("cross"), 1)
        except (OSError, StopIteration, KeyError):
            headline = None
        if headline is not None and headline.is_file() and not a.twin:
            pack, kind = headline, "headline cross, seed 1"
        else:
            pack, kind = shape_twin(), "shape twin of the headline (accuracy not meaningful)"
    if not pack.is_file():
        p.error(f"{pack}: no such packed file; build one with `edgerec compress --out PATH`")
    models, heap = {}, {}
    for w in RUNTIMES:
        models[w], heap[w] = load_measured(pack, w)
    size = pack.stat().st_size
    import tempfile

    onnx_dir = Path(tempfile.mkdtemp(prefix="nlu-onnx-"))
    models["onnx"], onnx_bytes, onnx_rss = load_onnx(pack, onnx_dir / "export", models["int8"].tasks)
    task = "sentiment" if "sentiment" in models["int8"].tasks else sorted(models["int8"].tasks)[0]
    _, sents = sentences_32(models["int8"], load_task(task).text["test"], 300)
    r = {"benchmark": "nlu_memory", "pack": str(pack.relative_to(ROOT) if pack.is_relative_to(ROOT) else pack),
         "pack_kind": kind, "file_bytes": size, "config": models["int8"].config, "git": git_commit(),
         "machine": machine_info(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "sgemm_gflops_before": sgemm_gflops(),
         "resident_weight_bytes": {w: models[w].resident_weight_bytes() for w in RUNTIMES},
         "onnx": {"file_bytes": onnx_bytes, "session_rss_added_bytes": onnx_rss,
                  "note": "ONNX Runtime's arrays are not Python's: the RSS that opening the session and one "
                          "32-piece run add in a fresh process (onnxruntime imported before)"},
         "load_heap_bytes": heap,
         "latency_32": {"sentences": len(sents), "task": task, **latency(models, sents, task)},
         "agreement": agreement(models, sorted(models["int8"].tasks)),
         "goals": {"resident_weights": "<= 1.5x the file, and <= 4 MB", "latency": "p50 <= 1.25x float32's",
                   "onnx": "same label >= 99.5 % on each test set, accuracy within 0.3 points, file <= 1.91 MB"}}
    r["sgemm_gflops_after"] = sgemm_gflops()
    for w in RUNTIMES:
        r["resident_weight_bytes"][f"{w}_vs_file"] = round(r["resident_weight_bytes"][w] / size, 2)
    import shutil

    shutil.rmtree(onnx_dir, ignore_errors=True)
    write_json_atomic(a.out, r)
    print(markdown(r))
    return r


def markdown(r: dict) -> str:
    lat, res, heap = r["latency_32"], r["resident_weight_bytes"], r["load_heap_bytes"]
    rows = ["| runtime | file | resident weights | × file | heap added by loading | p50 / p99 per 32-piece sentence |",
            "|---|---|---|---|---|---|"]
    for w in RUNTIMES:
        rows.append(f"| {w} | {r['file_bytes']:,} B | {res[w]:,} B | {res[f'{w}_vs_file']} | {heap[w]:,} B | "
                    f"{lat[w]['p50_ms']} / {lat[w]['p99_ms']} ms |")
    if "onnx" in r:
        o = r["onnx"]
        rows.append(f"| ONNX Runtime (int8 QDQ) | {o['file_bytes']:,} B (.onnx) | – | – | {o['session_rss_added_bytes']:,} "
                    f"B RSS (session + 1 run) | {lat['onnx']['p50_ms']} / {lat['onnx']['p99_ms']} ms |")
    lines = rows + [""]
    for other in [k for k in ("float32", "onnx") if k in next(iter(r["agreement"].values()))]:
        worst = max(v[other]["max_abs_logit"] for v in r["agreement"].values())
        same = min(v[other]["same_label"] for v in r["agreement"].values())
        acc = max(abs(v[other]["accuracy"] - v["accuracy_int8"]) for v in r["agreement"].values())
        lines.append(f"{other} vs the int8 runtime on every task's test split: max |Δ logit| {worst:.1e}, same label "
                     f"on at least {100 * same:.2f} % of sentences, accuracy within {100 * acc:.2f} points "
                     f"({r['pack_kind']}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
