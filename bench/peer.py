"""edgerec next to RecBole 1.2.1, side by side in one run: the same data file, the closest protocol RecBole
has, and RecBole's DIN architecture (SASRec and GRU4Rec at RecBole's sizes, not architecture-matched).

    python bench/peer.py                                # DIN, SASRec, GRU4Rec; 1 epoch; seed 2024
    python bench/peer.py --models DIN --seeds 2024,1,2  # three seeds of DIN

RecBole is installed into its own venv (`--venv`, default .edgerec-cache/peer-venv) with pinned
versions (PEER_PACKAGES), on first use; it never touches edgerec's environment. torch is the same
version as edgerec's, from wherever pip finds it (as `make install` does: on this project's machines
the CPU wheel on disk; plain PyPI on Linux serves the CUDA build, which runs on the CPU too). Each
run is a fresh subprocess, one at a time, with the same torch thread count (EDGEREC_THREADS,
default 2). What each side runs is in bench/peer_recbole.py (RecBole, and the
settings changed from its defaults) and configs/ctr.yaml's `*_ml100k_peer` blocks (edgerec).

Measured per run: the training epoch's wall time (each framework's own batch building included;
validation and test evaluation excluded; RecBole draws its negatives inside the epoch, edgerec before
it, in sample building, which is timed separately: about 0.8 s for ml-100k), rows/s (training rows, each
framework's own unit: DIN has one row per positive and one per negative on both sides; RecBole's BPR
row is a (positive, negative) pair, so SASRec and GRU4Rec are compared as positives/s), peak RSS of
the process (data, model and all), and test AUC after the same number of epochs (with --epochs > 1,
edgerec's is the epoch best on validation, RecBole's the last one).

The two sides do not evaluate on the same test rows: RecBole holds out each user's last interaction in
file order and its histories include interactions of the same second; edgerec holds out the user's
last moment (every interaction sharing its timestamp) and a history is strictly earlier (the causal
cut; docs/results.md, "Honest samples"). Half of ml-100k's interactions share their second with the
user's previous one, so the AUCs are close but not a paired comparison; the speeds are (both make one
pass over ~190,000 rows with at most 50 behaviours each).
Writes bench/results/peer.json and a table in docs/results.md.
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
# Pinned so a rerun measures the same RecBole: numpy < 1.24 because RecBole 1.2.1 still uses np.float /
# np.long in places; ray (hyper-parameter search only) is left out, so recbole goes in with --no-deps.
PEER_PACKAGES = ["torch==2.13.0", "numpy==1.23.5", "scipy==1.10.1", "pandas==1.5.3", "scikit-learn==1.2.2",
                 "tqdm==4.66.1", "colorlog==4.7.2", "colorama==0.4.4", "pyyaml==6.0.1", "tensorboard==2.15.1",
                 "texttable==1.7.0", "thop==0.1.1.post2209072238", "tabulate==0.9.0", "psutil==5.9.8"]
RECBOLE = "recbole==1.2.1"


def ensure_venv(venv: Path) -> Path:
    """The peer venv's python, creating and filling the venv first when it lacks this package list or
    cannot import RecBole (a venv broken after its stamp was written is rebuilt, not trusted)."""
    python = venv / "bin" / "python"
    stamp = venv / ".peer-packages"
    want = "\n".join(PEER_PACKAGES + [RECBOLE])
    if python.exists() and stamp.exists() and stamp.read_text() == want and subprocess.run(
            [str(python), "-c", "import recbole, torch"], capture_output=True).returncode == 0:
        return python
    print(f"installing RecBole and its pinned dependencies into {venv} (once) ...", flush=True)
    steps = [([sys.executable, "-m", "venv", "--clear", str(venv)], "create the venv"),
             ([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES],
              "install RecBole's pinned dependencies"),
             ([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", RECBOLE],
              f"install {RECBOLE}")]
    for cmd, what in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise SystemExit(f"bench/peer.py: could not {what} in {venv}:\n{tail}\nThe packages come from the "
                             f"package registry pip is configured for (offline? a proxy?); --venv DIR puts the "
                             f"venv elsewhere.")
    stamp.write_text(want)
    return python


def ours(model: str, precision: str, seed: int, epochs: int) -> dict:
    """One edgerec run (in this process: the caller runs it as a subprocess)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import build_model, build_samples
    from edgerec.train.trainer import Trainer, evaluate_split

    cfg = load_experiment(CONFIG, f"{model}_ml100k_peer", [
        "train.progress=false", f"train.seed={seed}", f"train.epochs={epochs}", f"train.precision={precision}",
        "train.patience=1000"])
    t0 = time.perf_counter()
    samples = build_samples(cfg)
    build_s = time.perf_counter() - t0
    net = build_model(cfg, samples.spec)
    fit = Trainer(cfg.train, log=lambda *_: None).fit(net, samples)
    t = time.perf_counter()
    test = evaluate_split(net, samples, "test", ["AUC"], cfg.train.eval_batch_size)
    eval_s = time.perf_counter() - t
    n = len(samples.splits["train"])
    positives = int(samples.splits["train"].label.sum())
    return {"framework": "edgerec", "model": model, "precision": precision, "seed": seed, "epochs": epochs,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "train_positives": positives,
            "train_rows_per_epoch": n, "sample_building_seconds": round(build_s, 2),
            "epoch_seconds": round(fit.train_seconds / epochs, 2),
            "rows_per_s": round(n * epochs / fit.train_seconds, 1),
            "positives_per_s": round(positives * epochs / fit.train_seconds, 1),
            "test_auc": round(test["AUC"], 4), "eval_seconds": round(eval_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "params": sum(p.numel() for p in net.parameters())}


def run(cmd: list[str], out: Path) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)
    if proc.returncode or not out.exists():
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="DIN,SASRec,GRU4Rec")
    p.add_argument("--seeds", default="2024")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--precisions", default="fp32,bf16", help="edgerec's train.precision values to run")
    p.add_argument("--venv", default=str(ROOT / ".edgerec-cache" / "peer-venv"))
    p.add_argument("--ours", nargs=4, metavar=("MODEL", "PRECISION", "SEED", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "peer.json"))
    p.add_argument("--no-docs", action="store_true", help="do not rewrite the table in docs/results.md")
    p.add_argument("--append", action="store_true",
                   help="add these runs to the rows already in --out (another model or seed set, same machine)")
    a = p.parse_args(argv)
    if a.ours:
        model, precision, seed, out = a.ours
        Path(out).write_text(json.dumps(ours(model, precision, int(seed), a.epochs)))
        return {}
    sys.path.insert(0, str(ROOT))
    from edgerec.io import write_json_atomic
    from edgerec.train.ledger import git_commit, machine_info
    from bench.train_speed import cpu_facts

    threads = int(os.environ.get("EDGEREC_THREADS", 2))
    peer_python = ensure_venv(Path(a.venv))
    earlier = json.loads(Path(a.out).read_text()) if a.append and Path(a.out).exists() else None
    rows = list(earlier["rows"]) if earlier else []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models.split(","):
            for seed in [int(s) for s in a.seeds.split(",")]:
                out = Path(tmp) / f"recbole-{model}-{seed}.json"
                rows.append(run([str(peer_python), str(ROOT / "bench" / "peer_recbole.py"), model, str(seed),
                                 str(a.epochs), str(threads), str(out)], out))
                print(json.dumps(rows[-1]), flush=True)
                for precision in a.precisions.split(","):
                    out = Path(tmp) / f"edgerec-{model}-{precision}-{seed}.json"
                    rows.append(run([sys.executable, __file__, "--ours", model, precision, str(seed), str(out),
                                     "--epochs", str(a.epochs)], out))
                    print(json.dumps(rows[-1]), flush=True)
    report = {"benchmark": "peer", "dataset": "ml-100k (recbole==1.2.1's atomic files, user/item/timestamp)",
              "protocol": "leave-last-out by time, history <= 50, 1 uniform negative per positive (train and eval)",
              "epochs": a.epochs, "seeds": a.seeds if not earlier else f"{earlier['seeds']}; {a.models}: {a.seeds}",
              "git": git_commit(),
              "machine": {**machine_info(threads), **cpu_facts()}, "peer_packages": PEER_PACKAGES + [RECBOLE],
              "rows": rows, "ratios": ratios(rows)}
    write_json_atomic(a.out, report)
    if not a.no_docs:
        from bench.docs_tables import render_peer

        render_peer(report)
    print(json.dumps(report["ratios"], indent=1))
    return report


def ratios(rows: list[dict]) -> dict:
    """edgerec / RecBole speed per model and precision, on the unit both count the same way (DIN: rows,
    SASRec and GRU4Rec: positives), from the means over seeds."""
    import statistics

    out = {}
    for model in sorted({r["model"] for r in rows}):
        unit = "rows_per_s" if model == "DIN" else "positives_per_s"
        peer = [r[unit] for r in rows if r["model"] == model and r["framework"] != "edgerec"]
        for precision in sorted({r.get("precision") for r in rows if r["framework"] == "edgerec" and r["model"] == model}):
            mine = [r[unit] for r in rows if r["model"] == model and r["framework"] == "edgerec"
                    and r["precision"] == precision]
            if peer and mine:
                out[f"{model} {precision} / RecBole ({unit})"] = round(statistics.mean(mine) / statistics.mean(peer), 2)
    return out


if __name__ == "__main__":
    main()
