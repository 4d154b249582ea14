"""The serving load test on an earlier commit and on this checkout, interleaved in one run (issue 22).

    python bench/serve_before_after.py --before 054ede5                  # the issue's baseline commit
    python bench/serve_before_after.py --before 054ede5 --rates 100,200 --seconds 5   # a quick look

Why a wrapper: "half the server CPU of today's torch engine" compares two versions of the code, and
this machine's speed drifts, so the two must run side by side. The earlier commit is checked out in
a temporary git worktree and `bench/serve.py` runs from each tree in turn (PYTHONPATH = that tree, so
its server workers import its edgerec), alternating: before/torch, after/torch, before/onnx,
after/onnx. Each is bench/serve.py's ramp (saturation ends it), on the same data and seeds.
Writes bench/results/serve_before_after.json and its table in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve import KEPT_UP_P99_MS, kept_up  # noqa: E402


def run_tree(tree: Path, engine: str, a, out: Path) -> dict:
    """bench/serve.py of `tree` on one engine; its JSON report."""
    cmd = [sys.executable, str(tree / "bench" / "serve.py"), "--engines", engine, "--rates", a.rates,
           "--seconds", str(a.seconds), "--lag-events", str(a.lag_events), "--out", str(out), "--no-docs"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    return json.loads(out.read_text())


def markdown(report: dict) -> str:
    rows = ["| code | engine | offered | achieved | ok / errors | client p50 | p99 | stage 2 p50 | server CPU per request |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        for L in r["load"]:
            rows.append(f"| {r['code']} ({r['git']}) | {r['engine']} | {L['rate']:g}/s | {L['achieved_qps']}/s | "
                        f"{L['ok']} / {L['errors']} | {L['latency_ms']['p50']} ms | {L['latency_ms']['p99']} ms | "
                        f"{L['server_stage_ms']['stage2']['p50']} ms | {L['cpu_ms_per_request']['server']} ms |")
    s = report["summary"]
    at = ("the highest rate every run kept up with" if s["every_run_kept_up"]
          else "NO rate was kept up with by every run: the lowest offered rate")
    return "\n".join(rows + ["", f"Server CPU per request at {s['rate']:g} req/s ({at}): {s['cpu_ms']}. New path "
                                 f"({s['new']}) over the old one ({s['old']}): "
                                 f"{s['ratio']:.2f} (goal <= 0.5). Highest offered rate kept up with (no errors, >= 95 % "
                                 f"achieved, p99 <= {KEPT_UP_P99_MS:g} ms): {s['kept_up_to']}. {report['setup']}"])


def rates_kept_up(load: list[dict]) -> list[float]:
    """The offered rates of one ramp (in its order) up to its first rate not kept up with: an older
    tree's ramp may stop by an older rule and run past it, and a later rate that passes by chance is
    not a rate the server sustains."""
    out = []
    for row in load:
        if not kept_up(row):
            break
        out.append(row["rate"])
    return out


def summarize(runs: list[dict]) -> dict:
    """Server CPU per request of every run at the highest offered rate that EVERY run kept up with
    (`rates_kept_up`): near saturation a run's CPU includes its queue's drain. The ratio is the new
    path (after/onnx, else after on the first engine) over the old torch engine (else before on the
    first engine)."""
    kept = [set(rates_kept_up(r["load"])) for r in runs]
    common = set.intersection(*kept) if kept else set()
    rate = max(common) if common else min(L["rate"] for r in runs for L in r["load"])
    cpu = {f"{r['code']}/{r['engine']}": next(L["cpu_ms_per_request"]["server"] for L in r["load"] if L["rate"] == rate)
           for r in runs}
    first = runs[0]["engine"]
    new = "after/onnx" if "after/onnx" in cpu else f"after/{first}"
    old = "before/torch" if "before/torch" in cpu else f"before/{first}"
    saturation = {f"{r['code']}/{r['engine']}": max(k, default=0) for r, k in zip(runs, kept)}  # highest rate kept up with
    return {"rate": rate, "every_run_kept_up": bool(common), "cpu_ms": cpu, "new": new, "old": old,
            "ratio": cpu[new] / cpu[old], "kept_up_to": saturation}


def imported_from(tree: Path) -> str:
    """Where `tree`'s runs import edgerec from (a check that PYTHONPATH picked the right tree)."""
    out = subprocess.run([sys.executable, "-c", "import edgerec; print(edgerec.__file__)"], cwd=tree, check=True,
                         env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True).stdout.strip()
    if not out.startswith(str(tree)):
        raise SystemExit(f"{tree}: its runs would import edgerec from {out}, not from the tree itself")
    return out


def main(argv=None) -> dict:
    from bench.docs_tables import replace_block
    from edgerec.io import write_json_atomic
    from edgerec.train.ledger import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the earlier commit (git ref) to compare with")
    p.add_argument("--engines", default="torch,onnx")
    p.add_argument("--rates", default="100,200,300,400,500,600,700,800")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--lag-events", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_before_after.json"))
    p.add_argument("--no-docs", action="store_true")
    a = p.parse_args(argv)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    before = subprocess.run(["git", "rev-parse", "--short", a.before], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="edgerec-before-after-"))
    old_tree = tmp / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), before], cwd=ROOT, check=True,
                   capture_output=True)
    runs, trees = [], {}
    try:
        trees = {"before": imported_from(old_tree), "after": imported_from(ROOT)}
        for engine in a.engines.split(","):
            for code, tree, git in (("before", old_tree, before), ("after", ROOT, git_commit())):
                print(f"== {code} ({git}), {engine} engine", flush=True)
                r = run_tree(tree, engine, a, tmp / f"{code}_{engine}.json")
                runs.append({"code": code, "git": git, "engine": engine, "load": r["load"], "stream": r["stream"],
                             "setup": r["setup"]})
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    s = runs[0]["setup"]
    report = {"benchmark": "serve_before_after", "started": started, "machine": machine_info(), "before": before,
              "after": git_commit(), "imported_from": trees, "runs": runs, "summary": summarize(runs),
              "setup": f"{s['model']} ({s['weights']}), {s['items']} items, {s['candidates']} candidates, top {s['k']}; "
                       f"{s['server']}; {s['client']}; store {s['store']} holding {s['events_loaded']:,} events; "
                       f"{a.seconds:g} s per rate; order: " + ", ".join(f"{r['code']}/{r['engine']}" for r in runs) + "."}
    write_json_atomic(Path(a.out), report)
    table = markdown(report)
    print(table)
    if not a.no_docs:
        replace_block("serve_before_after", table + f"\n\nRaw: bench/results/serve_before_after.json; git {report['after']}.")
    return report


if __name__ == "__main__":
    main()
