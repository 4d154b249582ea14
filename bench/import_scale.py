"""Import throughput and peak memory: `edgerec data import` against a plain read of the same file.

    python bench/import_scale.py                       # 1M and 10M rows, CSV and Parquet (~10 min on 2 cores)
    python bench/import_scale.py --rows 100000 --quick # smoke
    python bench/import_scale.py --baseline b27c513    # + that commit's import, side by side

The log: an O2O impression export like the example log's (string user / item / session ids,
millisecond timestamps, 1-based positions, a 0/1 label, an inline category, a float user attribute
and an app-version column), synthesized with numpy for the row count asked (so that 10M rows need
no 10M-row simulator run): 1% of users and 5% of items are heavy, the rest uniform.

Per size and format, side by side in one run, each in its own fresh process (so peak RSS is that
step's own):
  plain read    pyarrow.csv.read_csv / pyarrow.parquet.read_table of the whole file (all columns)
  import        edgerec.data.imports.import_dataset (read, every check, id maps, sort, Parquet write)
  baseline      with --baseline REF: the same import with REF's edgerec (a git worktree)
Reported: seconds, rows/s, peak RSS (ru_maxrss), our time / plain read time (goal <= 2), and our peak
RSS / the in-memory size of the file read as Arrow (goal <= 3). Writes bench/results/import_scale.json
and its table in docs/results.md (<!-- import_scale -->).
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

MAP = ["--map", "user=uid", "--map", "item=poi", "--map", "time=event_ms", "--map", "label=clicked",
       "--map", "position=slot", "--map", "request=session", "--map", "item.category=cat",
       "--map", "user.scroll_depth=scroll_depth", "--map", "side.app=app", "--bucket", "scroll_depth=4",
       "--time-unit", "ms", "--tz", "Asia/Shanghai"]


def synth(path: Path, rows: int, fmt: str, seed: int = 0) -> None:
    """Write the synthetic export (module docstring) in chunks of 1M rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 200, 100), max(rows // 2000, 50)
    depth = np.round(rng.random(n_users), 3)
    cats = np.array(["noodles", "coffee", "groceries", "pharmacy", "bakery", "hotpot", "flowers", "laundry"])
    item_cat = cats[rng.integers(0, len(cats), n_items)]
    writer = None
    t0 = 1_767_225_600_000  # 2026-01-01 UTC, ms
    for lo in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - lo)
        heavy_u = rng.random(n) < 0.3
        u = np.where(heavy_u, rng.integers(0, max(n_users // 100, 1), n), rng.integers(0, n_users, n))
        heavy_i = rng.random(n) < 0.5
        i = np.where(heavy_i, rng.integers(0, max(n_items // 20, 1), n), rng.integers(0, n_items, n))
        t = pa.table({
            "uid": pa.array(np.char.add("u", u.astype(str))),
            "poi": pa.array(np.char.add("poi-", i.astype(str))),
            "event_ms": pa.array(t0 + rng.integers(0, 30 * 86_400_000, n)),
            "slot": pa.array(rng.integers(1, 9, n).astype(np.int16)),
            "clicked": pa.array((rng.random(n) < 0.1).astype(np.int8)),
            "session": pa.array(np.char.add("s", ((lo + np.arange(n)) // 8).astype(str))),
            "cat": pa.array(item_cat[i]),
            "scroll_depth": pa.array(depth[u]),
            "app": pa.array(np.where(rng.random(n) < 0.7, "7.2.0", "7.1.4")),
        })
        if fmt == "csv":
            if writer is None:
                writer = pacsv.CSVWriter(str(path), t.schema)
            writer.write_table(t)
        else:
            if writer is None:
                writer = pq.ParquetWriter(str(path), t.schema)
            writer.write_table(t)
    writer.close()


def _vm_hwm_mb() -> float:
    """Peak resident memory of THIS process image in MiB (VmHWM; ru_maxrss would carry the parent's
    peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(kind: str, path: str, out_root: str) -> dict:
    """Runs in a fresh process: one step, its seconds (module imports excluded, reported apart) and
    peak RSS (module imports included)."""
    import time

    t = time.perf_counter()
    if kind == "plain":
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    else:
        from edgerec.cli import _data_import  # noqa: F401 - what the CLI loads
        from edgerec.data.imports import DatasetFile, TableFile, import_dataset
    info = {"module_import_s": round(time.perf_counter() - t, 3)}
    t = time.perf_counter()
    if kind == "plain":
        table = pacsv.read_csv(path) if path.endswith(".csv") else pq.read_table(path)
        info.update(rows=table.num_rows, arrow_bytes=table.nbytes)
    else:
        m = dict(x.split("=", 1) for x in MAP[1:18:2])
        spec = DatasetFile("bench", TableFile(path, m), tz="Asia/Shanghai", time_unit="ms", buckets={"scroll_depth": 4})
        s = import_dataset(spec, Path(out_root), log=lambda *_: None)
        info.update(imported=s["imported_rows"], rejected=s["rejected_rows"])
    info["seconds"] = round(time.perf_counter() - t, 3)
    info["peak_rss_mb"] = round(_vm_hwm_mb(), 1)
    return info


def measure(kind: str, path: Path, data_dir: Path, code_root: Path = ROOT) -> dict:
    """One step in a fresh process, with the edgerec of `code_root` (this checkout or a baseline)."""
    env = {**os.environ, "EDGEREC_DATA_DIR": str(data_dir)}
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(code_root)!r}); "
            "sys.argv = ['x']; import edgerec; assert edgerec.__file__.startswith("
            f"{str(code_root)!r}), edgerec.__file__;"
            f"from bench.import_scale import _child; print('RESULT ' + json.dumps(_child({kind!r}, {str(path)!r}, "
            f"{str(data_dir)!r})))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        raise RuntimeError(f"{kind} {path}: {p.stderr[-2000:]}")
    return json.loads(line[0][7:])


def markdown(r: dict) -> str:
    rows = ["| rows | format | file MB | plain read s | import s | import rows/s | time ratio (goal ≤ 2) | "
            "plain peak RSS MiB | import peak RSS MiB | Arrow table MiB | RSS / Arrow (goal ≤ 3) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = any("baseline" in x for x in r["runs"])
    if base:
        rows[0] += f" {r['baseline']} import s | {r['baseline']} peak RSS MiB |"
        rows[1] += "---|---|"
    for x in r["runs"]:
        p, m = x["plain"], x["import"]
        rows.append(f"| {x['rows']:,} | {x['format']} | {x['file_mb']:.0f} | {p['seconds']:.2f} | {m['seconds']:.2f} | "
                    f"{x['rows'] / m['seconds']:,.0f} | {m['seconds'] / p['seconds']:.2f} | {p['peak_rss_mb']:,.0f} | "
                    f"{m['peak_rss_mb']:,.0f} | {p['arrow_bytes'] / 2 ** 20:,.0f} | "
                    f"{m['peak_rss_mb'] / (p['arrow_bytes'] / 2 ** 20):.2f} |")
        if base:
            rows[-1] += f" {x['baseline']['seconds']:.2f} | {x['baseline']['peak_rss_mb']:,.0f} |"
    return "\n".join(rows)


def _sizes(a, report: dict, tmp: Path, base: Path | None) -> None:
    """Per row count and format: write the file, then the plain read, our import (and the baseline's)."""
    for rows in [int(x) for x in a.rows.split(",")]:
        for fmt in a.formats.split(","):
            path = tmp / f"events_{rows}.{fmt}"
            synth(path, rows, fmt)
            run = {"rows": rows, "format": fmt, "file_mb": path.stat().st_size / 1e6,
                   "plain": measure("plain", path, tmp / "data"), "import": measure("import", path, tmp / "data")}
            if base is not None:
                run["baseline"] = measure("import", path, tmp / "data_base", code_root=base)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
            path.unlink()


def main(argv=None) -> dict:
    from edgerec.io import write_json_atomic
    from edgerec.train.ledger import git_commit, machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000000,10000000", help="comma-separated row counts")
    ap.add_argument("--formats", default="csv,parquet")
    ap.add_argument("--quick", action="store_true", help="smoke: no docs, output under runs/bench")
    ap.add_argument("--out", help="result JSON (default bench/results/import_scale.json)")
    ap.add_argument("--baseline", metavar="REF", help="also import with this git commit's edgerec, side by side")
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else (ROOT / "runs" / "bench" / "import_scale_quick.json" if a.quick
                                     else ROOT / "bench" / "results" / "import_scale.json")
    report = {"benchmark": "import_scale", "git": git_commit(), "machine": machine_info(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": [], "baseline": a.baseline,
              "note": "each step in a fresh process; peak RSS = ru_maxrss of that process (Python, pyarrow and, "
                      "for the import, edgerec's imports included)"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "baseline" if a.baseline else None
        if base is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), a.baseline],
                           check=True)
        try:
            _sizes(a, report, tmp, base)
        finally:
            if base is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    table = markdown(report)
    print(table)
    if not a.quick:
        from bench.docs_tables import replace_block

        replace_block("import_scale", table + f"\n\nRaw: bench/results/import_scale.json; git {report['git']}.")
    return report


if __name__ == "__main__":
    main()
