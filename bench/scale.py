"""Scale-out: how time and memory grow with the log, in memory against out of core (issue 21).

    python bench/scale.py                          # small, scale3m, scale7m, medium (~1 h on 2 cores)
    python bench/scale.py --sizes tiny small --quick   # smoke

Per o2o-sim size, in one run, each step in its own fresh process (so its peak RSS, ru_maxrss from
wait4, is that step's own), one after the other:
  prepare      `edgerec data prepare o2o-sim:SIZE` into a fresh data folder (simulate + write Parquet)
  shards       `edgerec batch --shards configs/ctr.yaml:COUPA_scale` (the samples, written out of core;
               DIN_scale has the same data settings, so both train on them)
  spark shards the same with `--engine spark` (local[2]): time, peak RSS, and its folder compared with
               the polars one file by file (data.shards.folder_differences; removed after)
  train        `edgerec train` of DIN_scale and COUPA_scale for one epoch (train.epochs=1), in memory
               (the default: samples built in that process) and out of core (--set data.shards=...);
               epoch time = the ledger's train_seconds (the training loop, not validation)
At the smallest size also: DIN and COUPA out of core under torchrun with 1 and 2 processes
(samples/s, the validation AUC after the epoch, the largest process's peak RSS). At the largest size also: COUPA out
of core with data.max_items (frequency-capped item ids): the share of samples whose item fell into
the shared index and the AUC against the uncapped run (same seed and batches).

Reported: the fitted exponent of epoch time against training samples (goal <= 1.1), the spread of
out-of-core peak RSS across sizes (goal within +-25 %), out-of-core / in-memory throughput at the
smallest size (goal within 15 %). One seed (2024): a speed and memory benchmark, not a quality one.
Writes bench/results/scale.json (after every size), docs/scale.png and docs/results.md's table
(<!-- scale -->).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results" / "scale.json"
MODELS = ("DIN", "COUPA")


def _tree(pid: int) -> list[int]:
    """pid and its descendants (torchrun's ranks), from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _anon_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run a command (its output to `log`); its wall seconds, peak RSS (ru_maxrss of the largest
    process waited for: resident pages, the memory-mapped store's included) and peak anonymous RSS
    (RssAnon of the largest process, sampled 5 times a second: the process's own memory, without
    file pages that the page cache holds and shares between processes)."""
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT)
        peak_anon, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak_anon[0] = max([peak_anon[0], *(_anon_mb(q) for q in _tree(p.pid))])

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        _, status, ru = os.wait4(p.pid, 0)
        done.set()
        watcher.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}; see {log}")
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "peak_anon_mb": round(peak_anon[0], 1)}


def last_run(ledger: Path) -> dict:
    return json.loads(ledger.read_text().splitlines()[-1])


def edgerec(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgerec", *args]


def train(expid: str, size: str, tmp: Path, log: Path, extra: list[str], launcher: list[str] | None = None) -> dict:
    """One `edgerec train` of one epoch in its own process (under `launcher`, e.g. torchrun)."""
    ledger = tmp / "ledger.jsonl"
    argv = ["train", "--config", "configs/ctr.yaml", "--expid", expid, "--no-progress",
            "--set", f"dataset=o2o-sim:{size}", "--set", f"output_dir={tmp / 'runs'}", "--set", f"ledger={ledger}",
            *[x for kv in extra for x in ("--set", kv)]]
    cmd = [*launcher, "-m", "edgerec", *argv] if launcher else edgerec(*argv)
    r = run(cmd, log, data_env(tmp))
    row = last_run(ledger)
    return {**r, "epoch_seconds": row["train_seconds"], "samples_per_second": row["train_samples_per_second"],
            "valid_AUC": round(row["valid"]["AUC"], 5), "test_AUC": round(row["test"]["AUC"], 5),
            "processes": row.get("processes", 1), "n_params": row["n_params"], "shards": row["config"]["data"]["shards"]}


def data_env(tmp: Path) -> dict:
    """The benchmark's own data folder: prepare is timed from nothing, and the user's cache is untouched."""
    return {"EDGEREC_DATA_DIR": str(tmp / "data")}


def one_size(size: str, tmp: Path, log: Path, a) -> dict:
    prep = run(edgerec("data", "prepare", f"o2o-sim:{size}"), log, data_env(tmp))
    out = tmp / f"batch-{size}"
    shards = run(edgerec("batch", "--shards", "configs/ctr.yaml:COUPA_scale", "--set", f"dataset=o2o-sim:{size}",
                         "--out", str(out)), log, data_env(tmp))
    mf = json.loads((out / "shards" / "manifest.json").read_text())
    row = {"size": size, "events": None, "prepare": prep, "shards": shards, "spark_shards": spark_shards(size, out, tmp, log),
           "train_samples": mf["rows"]["train"], "valid_samples": mf["rows"]["valid"], "test_samples": mf["rows"]["test"],
           "stored_clicks": mf["store_rows"], "users": mf["info"]["users"], "items": mf["info"]["items"],
           "shard_mb": round(sum(f.stat().st_size for f in (out / "shards").iterdir()) / 2**20, 1), "train": {}}
    row["events"] = events(row)
    quick = ["train.max_steps_per_epoch=20"] if a.quick else []
    for model in MODELS:
        for mode, extra in (("in_memory", []), ("out_of_core", [f"data.shards={out / 'shards'}"])):
            row["train"][f"{model}/{mode}"] = train(f"{model}_scale", size, tmp, log, [*extra, *quick])
            print(f"  {size} {model} {mode}: {row['train'][f'{model}/{mode}']}", flush=True)
    return row, out / "shards"


def spark_shards(size: str, polars_out: Path, tmp: Path, log: Path) -> dict:
    """The same shards written by the Spark job (local[2]): its time, peak memory and whether its
    folder equals the polars one file by file. Its memory is read from peak_anon_mb (the largest
    process of the tree: the JVM, a Python worker or the driver): ru_maxrss misses the JVM, which
    the driver stops rather than waits for."""
    from edgerec.data.shards import folder_differences

    out = tmp / f"batch-{size}-spark"
    r = run(edgerec("batch", "--shards", "configs/ctr.yaml:COUPA_scale", "--engine", "spark",
                    "--set", f"dataset=o2o-sim:{size}", "--out", str(out)), log, data_env(tmp))
    r["differences_from_polars"] = folder_differences(polars_out / "shards", out / "shards")
    shutil.rmtree(out)
    print(f"  {size} spark shards: {r}", flush=True)
    return r


def events(row: dict) -> int:
    """Events of the log: on the impression protocol every exposure is one sample (clicks included)."""
    return row["train_samples"] + row["valid_samples"] + row["test_samples"]


def torchrun_rows(size: str, shards: Path, tmp: Path, log: Path, a) -> dict:
    quick = ["train.max_steps_per_epoch=20"] if a.quick else []
    rows = {}
    for model in MODELS:
        for n in (1, 2):
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
            rows[f"{model}/{n}"] = train(f"{model}_scale", size, tmp, log,
                                         [f"data.shards={shards}", f"train.threads={2 // n}", *quick], launcher)
            print(f"  torchrun {model} {n}: {rows[f'{model}/{n}']}", flush=True)
    return rows


def capped(size: str, shards_full: Path, tmp: Path, log: Path, a, cap: int) -> dict:
    out = tmp / f"batch-{size}-cap"
    shards = run(edgerec("batch", "--shards", "configs/ctr.yaml:COUPA_scale", "--set", f"dataset=o2o-sim:{size}",
                         "--set", f"data.max_items={cap}", "--out", str(out)), log, data_env(tmp))
    info = json.loads((out / "shards" / "manifest.json").read_text())["info"]
    quick = ["train.max_steps_per_epoch=20"] if a.quick else []
    r = train("COUPA_scale", size, tmp, log, [f"data.shards={out / 'shards'}", f"data.max_items={cap}", *quick])
    return {"size": size, "item_cap": cap, "items_before_cap": info["items_before_cap"],
            "capped_sample_share": info["capped_sample_share"], "capped_history_share": info["capped_history_share"],
            "shards": shards, "train": r}


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    import numpy as np

    if len(xs) < 2:
        return None
    return round(float(np.polyfit(np.log(xs), np.log(ys), 1)[0]), 3)


def summarize(report: dict) -> dict:
    rows = report["rows"]
    for r in rows:  # the first run of 2026-12-04 counted the clicks twice
        r["events"] = events(r)
    s = {}
    for model in MODELS:
        for mode in ("in_memory", "out_of_core"):
            key = f"{model}/{mode}"
            s[f"epoch_exponent {key}"] = fit_exponent([r["train_samples"] for r in rows],
                                                      [r["train"][key]["epoch_seconds"] for r in rows])
            for what in ("peak_rss_mb", "peak_anon_mb"):
                v = [r["train"][key][what] for r in rows]
                s[f"{what} range {key}"] = [min(v), max(v)]
                s[f"{what} spread {key}"] = round(max(v) / min(v) - 1, 3)  # goal (peak RSS, out of core) <= 0.25
        first = rows[0]["train"]
        s[f"throughput_ooc_over_mem {model}"] = round(first[f"{model}/out_of_core"]["samples_per_second"]
                                                      / first[f"{model}/in_memory"]["samples_per_second"], 3)
    if "capped" in report:  # the same seed, shards and batches order but for the cap: the cap's AUC cost
        c, last = report["capped"], rows[-1]["train"]["COUPA/out_of_core"]
        s["capped_valid_AUC_minus_uncapped"] = round(c["train"]["valid_AUC"] - last["valid_AUC"], 5)
        s["capped_test_AUC_minus_uncapped"] = round(c["train"]["test_AUC"] - last["test_AUC"], 5)
    return s


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["train_samples"] for r in rows]
    ev = [r["events"] for r in rows]
    for model, color in zip(MODELS, ("tab:blue", "tab:orange")):
        for mode, style in (("in_memory", "--"), ("out_of_core", "-")):
            key = f"{model}/{mode}"
            a1.plot(x, [r["train"][key]["epoch_seconds"] for r in rows], style, marker="o", color=color,
                    label=f"{model} {mode.replace('_', ' ')}")
            a2.plot(ev, [r["train"][key]["peak_rss_mb"] for r in rows], style, marker="o", color=color,
                    label=f"{model} {mode.replace('_', ' ')}")
    a1.set(xscale="log", yscale="log", xlabel="training samples", ylabel="seconds per epoch",
           title="Epoch time (log-log; slope = exponent)")
    a2.set(xscale="log", xlabel="events in the log", ylabel="peak RSS of the training process (MiB)",
           title="Peak memory")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"o2o-sim, one epoch, 2-core CPU, git {report['git']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = ["| size | events | train samples | prepare s | shards s (peak MiB) | model | epoch s in memory | "
             "epoch s out of core | peak RSS MiB in memory | peak RSS MiB out of core | peak anon. MiB in memory / "
             "out of core | valid AUC in memory / out of core |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    spark = [r for r in report["rows"] if "spark_shards" in r]
    for r in report["rows"]:
        for model in MODELS:
            m, o = r["train"][f"{model}/in_memory"], r["train"][f"{model}/out_of_core"]
            lines.append(f"| {r['size']} | {r['events']:,} | {r['train_samples']:,} | {r['prepare']['seconds']:.0f} | "
                         f"{r['shards']['seconds']:.0f} ({r['shards']['peak_rss_mb']:,.0f}) | {model} | "
                         f"{m['epoch_seconds']:.1f} | {o['epoch_seconds']:.1f} | {m['peak_rss_mb']:,.0f} | "
                         f"{o['peak_rss_mb']:,.0f} | {m['peak_anon_mb']:,.0f} / {o['peak_anon_mb']:,.0f} | "
                         f"{m['valid_AUC']:.4f} / {o['valid_AUC']:.4f} |")
    if spark:
        lines += ["", "The same shards written by the Spark job (`edgerec batch --shards ... --engine spark`, local[2]):",
                  "", "| size | events | polars s (peak anon. MiB) | Spark s (peak anon. MiB) | Spark folder = polars folder |",
                  "|---|---|---|---|---|"]
        for r in spark:
            k, d = r["spark_shards"], r["spark_shards"]["differences_from_polars"]
            lines.append(f"| {r['size']} | {r['events']:,} | {r['shards']['seconds']:.0f} "
                         f"({r['shards']['peak_anon_mb']:,.0f}) | {k['seconds']:.0f} ({k['peak_anon_mb']:,.0f}) | "
                         f"{'yes, file by file' if not d else 'NO: ' + ', '.join(d)} |")
    return "\n".join(lines)


def replace_sizes(a) -> dict:
    """--replace: measure a.sizes again (each in one run, as before) and put their rows in place."""
    from edgerec.train.ledger import git_commit

    report = json.loads(Path(a.out).read_text())
    with tempfile.TemporaryDirectory(prefix="edgerec-scale-") as t:
        log = Path(a.out).with_suffix(".log")
        for size in a.sizes:
            row, _ = one_size(size, Path(t), log, a)
            row["remeasured"] = {"git": git_commit(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            report["rows"] = [row if r["size"] == size else r for r in report["rows"]]
    report["summary"] = summarize(report)
    Path(a.out).write_text(json.dumps(report, indent=1))
    finish(report, a)
    return report


def finish(report: dict, a) -> None:
    if not a.quick:
        plot(report, ROOT / "docs" / "scale.png")
        from bench.docs_tables import replace_block

        replace_block("scale", markdown(report))
    print(json.dumps(report["summary"], indent=1))


def main(argv=None) -> dict:
    from edgerec.train.ledger import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["small", "scale3m", "scale7m", "medium"])
    p.add_argument("--cap", type=int, default=1000, help="data.max_items for the capped run at the largest size")
    p.add_argument("--quick", action="store_true", help="20 steps per epoch (smoke)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--replace", action="store_true",
                   help="re-measure only --sizes and replace their rows in --out (a size disturbed by other work)")
    a = p.parse_args(argv)
    report = {"benchmark": "scale", "git": git_commit(), "machine": machine_info(),
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": 2024,
              "configs": ["configs/ctr.yaml:DIN_scale", "configs/ctr.yaml:COUPA_scale"], "epochs": 1,
              "quick": a.quick, "rows": []}
    if a.replace:
        return replace_sizes(a)
    with tempfile.TemporaryDirectory(prefix="edgerec-scale-") as t:
        tmp = Path(t)
        log = Path(a.out).with_suffix(".log")
        log.write_text("")
        for i, size in enumerate(a.sizes):
            print(f"{size}:", flush=True)
            row, shards = one_size(size, tmp, log, a)
            report["rows"].append(row)
            if i == 0:
                report["torchrun"] = {"size": size, "processes": torchrun_rows(size, shards, tmp, log, a)}
            if i == len(a.sizes) - 1:
                report["capped"] = capped(size, shards, tmp, log, a, a.cap)
            report["summary"] = summarize(report)
            Path(a.out).write_text(json.dumps(report, indent=1))
            for f in (tmp / "runs").glob("*/*/model.safetensors"):
                f.unlink()
    finish(report, a)
    return report


if __name__ == "__main__":
    main()
