"""edgerec command line. Run `edgerec --help`, or `edgerec COMMAND --help` for one command.

Errors caused by input (bad file, bad config, unknown dataset) print one clear message and exit
with status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import os
import json
import math
import runpy
import sys
import time
from pathlib import Path

from edgerec.errors import EdgerecError

DESCRIPTION = """\
edgerec: edge-cloud recommendation for local-services feeds.

Typical session:
  edgerec data list                                  what datasets exist
  edgerec data describe ml-100k                      sizes, time span, columns
  edgerec train --config configs/ctr.yaml --expid DIN_ml100k
  edgerec train --config configs/ctr.yaml --expid DIN_ml100k --set train.lr=5e-4 --seed 1 --seed 2
  edgerec eval --run runs/DIN_ml100k/<stamp>-seed2024 --split test
  edgerec explain --run runs/DiCycle_ml100k/<stamp>-seed1   PNGs of learned time cycles
  edgerec results                                    the results ledger as a table
  edgerec bench ctr                                  the baseline benchmark (bench/ctr.py)
  edgerec stream --events ev.jsonl --export-from o2o-sim:tiny   events -> online feature store
  edgerec batch --dataset o2o-sim:tiny --out runs/batch      daily features + samples (polars or Spark)
  edgerec serve --run runs/COUPA_o2o/<stamp>-seed1           two-stage HTTP service (FastAPI), console at /
  edgerec predict --run RUN --input rows.csv --out scores.parquet   batch scoring of raw rows
  edgerec compress --method cross                            EI-BERT: the <= 1.91 MB on-device NLU file
  edgerec demo                                       the main job: the whole edge-cloud loop (`make demo`)
"""


def _pairs(values: list[str], flag: str, example: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        key, eq, val = v.partition("=")
        if not eq or not key or not val:
            raise EdgerecError(f"{flag} {v!r}: expected FIELD=COLUMN, e.g. {flag} {example}")
        out[key.strip()] = val.strip()
    return out


def _data_import(args: argparse.Namespace, registry) -> int:
    from edgerec.data.imports import DatasetFile, TableFile, import_dataset

    maps = _pairs(args.map, "--map", "user=user_id")
    split = {"items": {}, "users": {}, "events": {}}
    for k, v in maps.items():
        head, dot, rest = k.partition(".")
        split[head if dot and head in ("items", "users") else "events"][rest if head in ("items", "users") and dot
                                                                        else k] = v
    for key, path in (("items", args.items), ("users", args.users)):
        if split[key] and not path:
            raise EdgerecError(f"--map {key}.FIELD=... needs --{key} FILE")
    buckets = {}
    for k, v in _pairs(args.bucket, "--bucket", "price=8").items():
        try:
            buckets[k] = int(v)
        except ValueError:
            raise EdgerecError(f"--bucket {k}={v}: the number of buckets is an integer, e.g. --bucket {k}=8") from None
    spec = DatasetFile(
        name=args.ids[0], events=TableFile(str(Path(args.events).resolve()), split["events"]),
        items=TableFile(str(Path(args.items).resolve()), split["items"]) if args.items else None,
        users=TableFile(str(Path(args.users).resolve()), split["users"]) if args.users else None,
        tz=args.tz, time_unit=args.time_unit, buckets=buckets,
        click_kinds=[x for x in args.click_kinds.split(",") if x],
        exposure_kinds=[x for x in args.exposure_kinds.split(",") if x], min_user_events=args.min_user_events)
    if args.ids[0] in registry.REGISTRY:
        raise EdgerecError(f"{args.ids[0]!r} is a bundled dataset; choose another name for yours")
    import_dataset(spec, registry.data_dir())
    print(f"next: edgerec data describe {spec.name}   (then `dataset: {spec.name}` in an experiment config)")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from edgerec.data import registry

    if args.action == "list":
        for info in registry.REGISTRY.values():
            variants = f"  variants: {', '.join(info.variants)} (default {info.default_variant})" if info.variants else ""
            prepared = "prepared" if any((registry.data_dir()).glob(f"{info.name}*/meta.json")) else "not prepared"
            print(f"{info.name:<10} {info.summary}\n{'':<10} source: {info.source}; {prepared}{variants}")
        print(f"\ncache: {registry.data_dir()}  (set EDGEREC_DATA_DIR to move it)")
        mine = registry.imported_names()
        if mine:
            print(f"imported (edgerec data import): {', '.join(mine)}")
        return 0
    if args.action == "example":
        from edgerec.data.example import IMPORT_ARGS, describe_example, write_example_log

        out = args.ids[0] if args.ids else "example-log"
        paths = write_example_log(out, size=args.size)
        print(f"wrote {describe_example(paths)}\nimport it with:\n  edgerec data import myfeed "
              f"--events {paths['events']} --items {paths['items']} " + " ".join(IMPORT_ARGS))
        return 0
    if args.action == "import":
        return _data_import(args, registry)
    if not args.ids:
        raise EdgerecError(f"edgerec data {args.action}: name at least one dataset, e.g. ml-100k")
    for dataset_id in args.ids:
        if args.action == "prepare":
            t0 = time.time()
            path = registry.prepare(dataset_id, force=args.force)
            print(f"{dataset_id}: ready at {path} ({time.time() - t0:.1f}s)")
        else:
            d = registry.describe(dataset_id)
            if args.json:
                print(json.dumps(d, indent=2))
                continue
            print(f"{d['id']}  ({d['source']})")
            print(f"  license   {d['license']}")
            print(f"  events    {d['events']:,}   users {d['users']:,}   items {d['items']:,}")
            print(f"  time      {d['time_range_utc'][0]} .. {d['time_range_utc'][1]} UTC"
                  + (f"   (calendar features in {d['tz']} local time)" if d.get("tz", "UTC") != "UTC" else ""))
            print(f"  label=1   {d['label_rate']:.4f} of events")
            if "positions" in d:
                print("  position  " + "  ".join(f"{p}: {v['share']:.2f} (ctr {v['ctr']:.3f})" for p, v in d["positions"].items()))
            print("  columns")
            for name, doc in d["columns"].items():
                print(f"    {name:<24} {doc}")
            for kind in ("item_features", "user_features"):
                if d.get(kind):
                    print(f"  {kind.split('_')[0]} attributes")
                    for name, doc in d[kind].items():
                        print(f"    {name:<24} {doc}")
            if "import" in d:
                imp = d["import"]
                print(f"  import    {imp['read_rows']:,} rows read, {imp['imported_rows']:,} imported, "
                      f"{imp['rejected_rows']:,} rejected" + "".join(f"; {k}: {v['rows']:,}" for k, v in imp["rejected"].items()))
            for key in ("notes", "timestamp_reconstruction", "release_year_unparsed"):
                if key in d:
                    print(f"  {key}: {d[key]}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment

    from edgerec.train import distributed

    if args.nproc > 1 and distributed.world().size == 1:  # start the ranks; each runs this command again
        _prepare_ranks(args)
        os.environ.setdefault("EDGEREC_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
        code = distributed.launch(_without_nproc(args.argv), args.nproc)
        if code:
            raise EdgerecError(f"train --nproc {args.nproc}: the training processes failed (torchrun exit {code}); "
                               "each rank's message is above.")
        return 0
    seeds = args.seed or [None]
    results, cache = [], {}
    for seed in seeds:
        overrides = list(args.set or [])
        if seed is not None:
            overrides.append(f"train.seed={seed}")
        if args.no_progress:
            overrides.append("train.progress=false")
        cfg = load_experiment(args.config, args.expid, overrides)
        results.append(run_experiment(cfg, sample_cache=cache))
    if distributed.world().main:
        _print_results(results)
    distributed.finish()
    return 0


def _prepare_ranks(args: argparse.Namespace) -> None:
    """train --nproc, before any rank starts: every config error is reported here, once; the dataset
    is prepared and the shards built here (so no rank races another for them), and shards that do
    not fit the config are refused."""
    import torch

    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import check_before_work, open_samples
    from edgerec.train.trainer import resolve_device

    for seed in args.seed or [None]:
        cfg = load_experiment(args.config, args.expid, [*(args.set or []), *(
            [f"train.seed={seed}"] if seed is not None else [])])
        check_before_work(cfg)
        if resolve_device(cfg.train.device).type == "cuda" and args.nproc > torch.cuda.device_count():
            raise EdgerecError(f"--nproc {args.nproc} with train.device={cfg.train.device}: torch sees "
                               f"{torch.cuda.device_count()} CUDA device(s), one per process is needed.")
        cfg.data.out_of_core = True
        open_samples(cfg)  # builds the shards and checks them here, as each rank then opens them


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line the ranks run: this one without --nproc (they must not start ranks again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _print_results(results) -> None:
    from edgerec.train.report import aggregate, fmt_ms, text_table

    rows = [{"expid": r.expid, "model": r.model, "dataset": r.dataset, "seed": r.seed,
             **{f"test {k}": v for k, v in r.test.items()}, "epochs": r.epochs_run,
             "train s": f"{r.train_seconds:.1f}"} for r in results]
    metric_cols = [c for c in rows[0] if c.startswith("test ")]
    print("\nResults (best epoch on validation, evaluated on test):")
    print(text_table(rows, ["expid", "model", "dataset", "seed", *metric_cols, "epochs", "train s"]))
    for a in aggregate(rows, ["expid"], metric_cols):
        if a["n"] > 1:  # only experiments that ran with several seeds
            print(f"{a['expid']}: mean ± std over {a['n']} seeds: "
                  + "  ".join(f"{m[5:]} {fmt_ms(a[m], a[m + '_std'])}" for m in metric_cols))
    print(f"checkpoints: {', '.join(r.run_dir for r in results)}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from edgerec.train.experiment import load_run
    from edgerec.train.trainer import evaluate_split

    cfg, model, samples = load_run(args.run)
    metrics = args.metrics.split(",") if args.metrics else cfg.train.metrics
    from edgerec.train.metrics import parse_metric

    for m in metrics:
        try:
            parse_metric(m)
        except ValueError as exc:
            raise EdgerecError(f"--metrics: {exc}") from None
    res = evaluate_split(model, samples, args.split, metrics, cfg.train.eval_batch_size)
    print(f"{cfg.model} on {cfg.dataset} [{args.split}, {len(samples.splits[args.split]):,} samples]")
    for k, v in res.items():
        print(f"  {k:<10} {v:.4f}")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from edgerec.train.ledger import read_ledger
    from edgerec.train.report import text_table

    rows = read_ledger(args.ledger)[-args.last:]
    if not rows:
        print(f"no runs in {args.ledger} yet; run `edgerec train ...` first.")
        return 0
    flat = [{"time": r["time"], "expid": r["expid"], "model": r["model"], "dataset": r["dataset"],
             "seed": r["seed"], "hash": r["config_hash"], **{f"test {k}": v for k, v in r["test"].items()},
             "wall s": r["wall_seconds"]} for r in rows]
    cols = list(dict.fromkeys(c for r in flat for c in r))
    print(text_table(flat, cols))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from edgerec.train.explain import explain_run

    plots = tuple(p.strip() for p in args.plots.split(",") if p.strip())
    for path in explain_run(args.run, args.out, samples=args.samples, plots=plots):
        print(f"wrote {path}")
    return 0


def _find_repo_file(rel: str) -> Path | None:
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / rel).is_file():
            return root / rel
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    script = _find_repo_file(f"bench/{args.name}.py")
    if script is None:
        raise EdgerecError(f"no benchmark bench/{args.name}.py (run from the edgerec checkout).")
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]. Anything else is argparse's error naming the flag,
    before any work: --port 70000 listened on another port, --positions 0 crashed the stream at the
    first click with a position."""
    rule = f"{low}..{high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            from edgerec.features.definition import cut

            raise argparse.ArgumentTypeError(f"expected an integer {rule}, got {cut(text)}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer {rule}, got {value}")
        return value

    return parse


def _event_file(path: str, follow: bool = False) -> Path:
    """--events as a file that exists (or, with --follow, may appear later), never a directory (that was
    an IsADirectoryError traceback)."""
    p = Path(path)
    if p.is_dir():
        raise EdgerecError(f"--events {path} is a directory; name the event file (JSON lines) in it.")
    if not p.exists() and not follow:
        raise EdgerecError(f"--events {path}: no such event file (JSON lines; make one with --export-from DATASET).")
    if p.name.lower().removesuffix(".gz").endswith((".csv", ".tsv", ".parquet", ".pq", ".txt")):
        raise EdgerecError(f"--events {path}: the stream reads wire events, JSON lines with event_id, user_id, "
                           "item_id, ts and kind (docs/design.md, \"Event rules\"), not a table. For your own log: "
                           f"`edgerec data import NAME --events {path} --map ...`, then "
                           "`edgerec stream --events events.jsonl --export-from NAME` (docs/your-data.md).")
    return p


def _add_store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="sqlite:runs/features.db",
                   help="memory | sqlite:PATH | redis://HOST:PORT/DB (default %(default)s)")


def _add_definition_args(p: argparse.ArgumentParser) -> None:
    """The FeatureDefinition's sizes: stream and batch must fold with the same ones."""
    p.add_argument("--max-len", type=_int_in(1), default=50, help="recent clicks kept per user (default %(default)s)")
    p.add_argument("--positions", type=_int_in(1), default=20, help="display positions tracked (default %(default)s)")
    p.add_argument("--tz", help="time zone of the per-user hour-of-week counts (default: the dataset's, e.g. an "
                   "imported log's --tz; else, for a stream, the zone its --store was folded in; else UTC)")


def _definition(args: argparse.Namespace, dataset: str | None, store=None) -> "FeatureDefinition":
    """The FeatureDefinition of stream / batch: sizes from the flags, the zone from --tz, else the
    dataset's, else the zone the store was folded in (a stream of a served run's feedback), else UTC."""
    from edgerec.features.definition import FeatureDefinition
    from edgerec.features.time import local_clock

    tz = args.tz
    if tz is None and dataset:
        from edgerec.data import registry

        tz = json.loads((registry.prepare(dataset) / "meta.json").read_text()).get("tz")  # meta only: no events
    if tz is None and store is not None:
        tz = store.zone()
    tz = tz or "UTC"
    try:
        local_clock(tz)
    except ValueError as e:
        raise EdgerecError(f"--tz: {e}") from None
    return FeatureDefinition(max_len=args.max_len, n_positions=args.positions, tz=tz)


def _add_future_skew_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--future-skew-hours", type=float, default=24.0,
                   help=f"{what} an event whose ts is later than this machine's clock plus this many hours (it "
                        "would move the store's watermark ahead, and every later event would look older than the "
                        "dedup window); 0 = no bound, e.g. to replay a log that lies ahead of the clock "
                        "(default %(default)s)")


def _add_dedup_days_arg(p: argparse.ArgumentParser, help: str) -> None:
    """--dedup-days, the stream's window, on every command that must agree with it (stream, batch, serve)."""
    p.add_argument("--dedup-days", type=float, default=7.0, help=help)


def _dedup_window_s(args: argparse.Namespace) -> int | None:
    """--dedup-days in seconds; 0 -> None (keep every id)."""
    return _seconds(args.dedup_days, 86400, "--dedup-days", "keep every event id")


def _seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0 (NaN, inf and negatives are argparse's error)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        from edgerec.features.definition import cut

        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {cut(text)}")
    return value


def _seconds(value: float, unit_s: int, flag: str, zero: str) -> int | None:
    """A duration flag in hours or days -> whole seconds (at least 1); exactly 0 -> None (`zero`)."""
    if not (0 <= value < float("inf")):  # NaN and inf too
        raise EdgerecError(f"{flag} must be a finite number >= 0 (0 = {zero}), got {value}.")
    return None if value == 0 else max(1, math.ceil(value * unit_s))


def _future_skew_s(hours: float, dedup_window_s: int | None) -> int | None:
    """--future-skew-hours in seconds, refused unless it is shorter than the store's dedup window: an
    event accepted at the edge of the skew would otherwise still move the watermark so far ahead
    that every current event looks older than the window."""
    skew = _seconds(hours, 3600, "--future-skew-hours", "no bound")
    if skew is not None and dedup_window_s is not None and skew >= dedup_window_s:
        raise EdgerecError(f"--future-skew-hours {hours:g} must be shorter than the dedup window "
                           f"({dedup_window_s / 3600:g} h): one event accepted that far ahead would make every "
                           "current event look older than the window. Lower the skew or raise the window.")
    return skew


def _cmd_stream(args: argparse.Namespace) -> int:
    from edgerec.features.definition import FeatureDefinition
    from edgerec.features.store import open_store
    from edgerec.serve.stream import FileEventSource, events_from_log, run_stream, write_event_file

    if bool(args.events) == bool(args.kafka):
        raise EdgerecError("edgerec stream: give exactly one source, --events FILE or --kafka HOST:PORT --topic T.")
    dedup_window_s = _dedup_window_s(args)
    future_skew_s = _future_skew_s(args.future_skew_hours, dedup_window_s)
    if args.events:  # a missing file is fine when --export-from writes it or --follow waits for it
        _event_file(args.events, follow=args.follow or bool(args.export_from))
    store = open_store(args.store, dedup_window_s=dedup_window_s)  # before any work
    definition = _definition(args, getattr(args, "export_from", None) or getattr(args, "dataset", None), store)
    from edgerec.features.store import check_zone

    check_zone(store.zone(), definition, f"--store {args.store}")  # before --export-from writes or publishes
    events = None
    if args.export_from:
        from edgerec.data import registry

        events = events_from_log(registry.load(args.export_from).events)
    if args.kafka:
        from edgerec.serve.kafka import KafkaEventSink, KafkaEventSource, ensure_topic

        ensure_topic(args.kafka, args.topic, args.partitions)
        if events is not None:
            print(f"published {KafkaEventSink(args.kafka, args.topic).send(events):,} events of {args.export_from} "
                  f"to {args.topic}")
        source = KafkaEventSource(args.kafka, args.topic, args.group, idle_timeout=args.idle_timeout)
        where = f"kafka {args.kafka} topic {args.topic} group {args.group}"
    else:
        if events is not None:
            print(f"wrote {write_event_file(events, args.events)} from {args.export_from}'s log")
        source = FileEventSource(args.events, follow=args.follow, idle_timeout=args.idle_timeout)
        from edgerec.io import check_writable

        check_writable(source.dead_letter(), "the dead-letter file")  # before the first bad line, not at it
        where = os.fsencode(args.events).decode("utf-8", "backslashreplace")  # printable, whatever its bytes
    t0 = time.perf_counter()
    try:
        stats = run_stream(source, store, definition, args.batch_size, args.max_messages, retries=args.retries,
                           future_skew_s=future_skew_s)
    finally:
        source.close()
    dt = time.perf_counter() - t0
    rejected_to = source.dead_letter() if not args.kafka else f"topic {args.topic}.rejected"
    print(f"{where}: read {stats.read:,} messages in {stats.batches} batches ({dt:.1f} s, "
          f"{stats.read / max(dt, 1e-9):,.0f}/s): {stats.applied:,} applied, {stats.duplicates:,} duplicates "
          f"skipped, {stats.rejected:,} rejected" + (f" ({stats.late:,} older than the dedup window)" if stats.late else "")
          + (f" ({stats.future:,} later than the clock + the allowed skew)" if stats.future else "")
          + (f" (see {rejected_to})" if stats.rejected else "")
          + (f", {stats.retries} store reconnects" if stats.retries else ""))
    if stats.incomplete is not None:
        print(f"warning: {where}: line {stats.incomplete + 1} has no newline yet and is not a complete JSON object "
              "(a writer still writing it?): left unread and uncommitted; a later run reads it once it is complete.",
              file=sys.stderr)
    if stats.read and stats.rejected == stats.read:  # nothing usable: likely a wrong file, not a few bad events
        print(f"warning: {where}: every one of the {stats.read:,} messages was rejected (see {rejected_to}); is it a "
              "file of wire events (JSON lines: event_id, user_id, item_id, ts, kind)? For your own log, "
              "`edgerec data import` it and stream with --export-from NAME.", file=sys.stderr)
    return 0  # dead-lettering is the stream's job, not a failure: a live stream must not stop at a bad batch


def _batch_shards(args: argparse.Namespace) -> int:
    """edgerec batch --shards CONFIG:EXPID: the experiment's samples as out-of-core shards."""
    from edgerec.data.shards import data_settings, dataset_fingerprint, write_shards
    from edgerec.io import check_writable
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import build_samples

    config, sep, expid = args.shards.rpartition(":")
    if not sep or not config or not expid:
        raise EdgerecError(f"--shards {args.shards!r}: give CONFIG:EXPID, e.g. configs/ctr.yaml:COUPA_scale")
    cfg = load_experiment(config, expid, args.set)
    if args.events or (args.dataset and args.dataset != cfg.dataset):
        raise EdgerecError(f"--shards: the input is the experiment's dataset ({cfg.dataset}); drop --events/--dataset "
                           f"or pass --set dataset={args.dataset or '...'}")
    out = Path(args.out) / "shards"
    check_writable(args.out, "--out", folder=True)
    t0 = time.perf_counter()
    meta = dataset_fingerprint(cfg.dataset)
    if args.engine == "spark":  # the same folder, built by a Spark job (edgerec/data/shards_spark.py)
        from edgerec.data.shards_spark import write_impression_shards_spark

        _, manifest = write_impression_shards_spark(cfg, out, data_settings(cfg), meta, args.spark_master)
        users, stored, rows = manifest["info"].get("users", 0), manifest["store_rows"], manifest["rows"]
        took = f"built and written on Spark ({args.spark_master}) in {time.perf_counter() - t0:.1f} s"
    else:
        samples = build_samples(cfg)
        t_build = time.perf_counter() - t0
        write_shards(samples, out, data_settings(cfg), cfg.data.rows_per_group, meta)
        users, stored = samples.info.get("users", 0), len(samples.store_item)
        rows = {k: len(v) for k, v in samples.splits.items()}
        took = f"built in {t_build:.1f} s, written in {time.perf_counter() - t0 - t_build:.1f} s"
    print(f"{cfg.dataset}: {users:,} users, {stored:,} stored behaviours; samples "
          f"{', '.join(f'{k} {v:,}' for k, v in rows.items())} {took} -> {out}")
    print(f"train on them: edgerec train --config {config} --expid {expid} --set data.shards={out}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from edgerec.features.batch import events_table, read_event_file, run_batch
    from edgerec.features.definition import FeatureDefinition

    if args.shards:
        return _batch_shards(args)
    if args.set:
        raise EdgerecError("edgerec batch: --set overrides the experiment of --shards CONFIG:EXPID; without "
                           "--shards the daily features take the definition flags (--max-len, --positions, --tz).")
    if bool(args.events) == bool(args.dataset):
        raise EdgerecError("edgerec batch: give exactly one input, --events FILE or --dataset ID.")
    from edgerec.io import check_writable

    check_writable(args.out, "--out", folder=True)  # before the input is read and folded
    t0 = time.perf_counter()
    if args.events:
        late: list = []
        window = _dedup_window_s(args)
        events = read_event_file(_event_file(args.events), window, late, _future_skew_s(args.future_skew_hours, window))
        if late:
            print(f"warning: {len(late):,} event(s) of {args.events} left out, as `edgerec stream` would dead-letter "
                  f"them: older than the newest one before them minus the dedup window ({args.dedup_days:g} days; "
                  "--dedup-days 0 folds them) or later than the clock + the allowed skew (--future-skew-hours)",
                  file=sys.stderr)
    else:
        from edgerec.data import registry
        from edgerec.serve.stream import events_from_log

        events = events_table(events_from_log(registry.load(args.dataset).events))
    definition = _definition(args, getattr(args, "export_from", None) or getattr(args, "dataset", None))
    written = run_batch(events, args.out, definition, args.engine, args.spark_master)
    import pyarrow.parquet as pq

    print(f"{args.engine}: {events.num_rows:,} events -> {args.out} in {time.perf_counter() - t0:.1f} s")
    for name, path in written.items():
        print(f"  {name:<14} {pq.ParquetFile(path).metadata.num_rows:>10,} rows  {path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.openapi and not args.run:
        from edgerec.serve.app import create_app

        _write_openapi(create_app(None), args.openapi)
        return 0
    if not args.run:
        raise EdgerecError("edgerec serve: --run RUN_DIR is required (a trained COUPA or DiCycle run; "
                           "see `edgerec train`).")
    from edgerec.serve import server

    t0 = time.perf_counter()
    if not 0 < args.max_body_mb <= 1e6:  # NaN too
        raise EdgerecError(f"--max-body-mb must be a number of megabytes > 0, got {args.max_body_mb}.")
    window = _dedup_window_s(args)
    recipe = server.ServiceRecipe(store=args.store, run=args.run, dataset=args.dataset, feedback_to=args.feedback_to,
                                  kafka=args.kafka, topic=args.topic, threads=args.threads,
                                  index_period=args.index_period, future_skew_s=_future_skew_s(args.future_skew_hours,
                                                                                               window),
                                  max_body_bytes=round(args.max_body_mb * 1e6), dedup_window_s=window,
                                  engine=args.engine, edge_pack=args.edge_pack,
                                  ledger=args.ledger or _run_ledger(args.run))
    server.check_workers(recipe, args.workers)
    service = server.build_service(recipe)  # also with --workers > 1: fails here, readably, before any worker
    from edgerec.serve.app import create_app

    app = create_app(service, recipe.max_body_bytes, server.console_options(recipe))  # a bad --edge-pack fails here
    if args.openapi:
        _write_openapi(app, args.openapi)
    to = (f"kafka {args.kafka} topic {args.topic}" if args.kafka else args.feedback_to or "applied in-process to the store")
    print(f"serving {type(service.ranker.model).__name__} ({args.engine}) from {args.run} over "
          f"{len(service.index.item_ids):,} items; "
          f"store {args.store}; feedback -> {to}; {args.workers} worker(s) x {args.threads} thread(s); "
          f"ready in {time.perf_counter() - t0:.1f} s\n"
          f"  console  http://{args.host}:{args.port}/\n"
          f"  API      http://{args.host}:{args.port}/docs  (POST /recommend, POST /feedback, GET /health)")
    if args.workers > 1:
        service.store.close()  # the workers open their own
        service = app = None
    server.run(recipe, args.host, args.port, args.workers, args.log_level, service=service, app=app)
    return 0


def _run_ledger(run_dir: str) -> str | None:
    """The ledger the run was written to (its config.json), for the console's Runs view."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())["experiment"]["ledger"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_openapi(app, path: str) -> None:
    from edgerec.io import write_json_atomic

    write_json_atomic(path, app.openapi())
    print(f"wrote the OpenAPI schema to {path}")


def _cmd_predict(args: argparse.Namespace) -> int:
    from edgerec.serve.predict import predict_rows

    from edgerec.io import check_writable

    check_writable(args.out, "--out")
    columns = _pairs(args.map, "--map", "user=uid")
    predict_rows(args.run, args.input, args.out, time_unit=args.time_unit, columns=columns)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.pack):
        raise EdgerecError("edgerec export: give exactly one of --run RUN (a ranker) or --pack FILE (the EI-BERT "
                           "device model from `edgerec compress`)")
    if args.pack:
        from edgerec.compress.onnx_export import export_edge_onnx

        export_edge_onnx(args.pack, args.out)
        return 0
    from edgerec.serve.export import export_run

    export_run(args.run, args.out)
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from edgerec.compress.pipeline import CompressConfig, build
    from edgerec.compress.tasks import TASKS
    from edgerec.io import check_writable, write_json_atomic

    from edgerec.compress.tasks import register_task, task_names

    own = _pairs(args.task, "--task", "dish_intent=intents.csv")
    if args.dataset:  # the recommender's own task on the user's catalogue: item title -> category
        own.setdefault("item_category", f"dataset:{args.dataset}")
    for name, source in own.items():
        register_task(name, source)  # read and checked now, before any teacher is trained
    tasks = tuple(args.tasks.split(",")) if args.tasks else (tuple(own) if own else TASKS)
    unknown = [t for t in tasks if t not in task_names()]
    if unknown:
        raise EdgerecError(f"--tasks: unknown task(s) {unknown}; choose from {list(task_names())} or add yours "
                           "with --task NAME=FILE")
    distill = {"epochs": args.epochs} if args.epochs else {}
    if args.augment:  # the measured setting (docs/results.md): word replacement, sentiment only, rotating
        distill["augment"] = args.augment
        distill["augment_replace_p"] = 0.4 if args.augment_replace is None else args.augment_replace
        if args.augment_tasks is None:
            distill["augment_tasks"] = tuple(t for t in ("sentiment",) if t in tasks)
        else:
            aug_tasks = tuple(t for t in args.augment_tasks.split(",") if t)
            if set(aug_tasks) - set(tasks):
                raise EdgerecError(f"--augment-tasks: {sorted(set(aug_tasks) - set(tasks))} not among the tasks "
                                   f"being built {list(tasks)}")
            distill["augment_tasks"] = aug_tasks
        distill["augment_rotate"] = True if args.augment_rotate is None else args.augment_rotate
    elif args.augment_replace is not None or args.augment_tasks is not None or args.augment_rotate is not None:
        raise EdgerecError("--augment-replace, --augment-tasks and --augment-rotate need --augment N > 0 (copies "
                           "per training sentence), e.g. --augment 6 --augment-rotate")
    if args.augment_replace is not None and not 0 <= args.augment_replace <= 0.9:
        raise EdgerecError(f"--augment-replace {args.augment_replace}: a probability in [0, 0.9]")
    floor = args.vocab_floor if args.vocab_floor is not None else (2000 if own else 0)
    cfg = CompressConfig(method=args.method, tasks=tasks, seed=args.seed, vocab_size=args.vocab, vocab_floor=floor,
                         embedding_bits=args.embedding_bits, teacher_epochs=args.teacher_epochs, distill=distill,
                         limit_per_split=args.limit,
                         general=({"epochs": args.general_epochs,  # smoke runs (--limit): a corpus to match
                                   **({"max_sentences": 10 * args.limit} if args.limit else {})}
                                  if args.general_epochs else None))
    check_writable(args.out, "--out")  # before the build, which takes minutes
    r = build(cfg, args.out)
    write_json_atomic(Path(args.out).with_suffix(".json"), r)
    a = r["artifact"]
    print(f"\nwrote {args.out}: {a['total']:,} bytes ({a['total'] / 1e6:.3f} MB; limit {a['limit_bytes'] / 1e6:.2f} MB "
          f"{'OK' if a['within_limit'] else 'EXCEEDED'})")
    for k in ("embeddings", "encoder", "heads", "vocabulary", "header_and_padding"):
        print(f"  {k:<20} {a[k]:>10,} bytes  {a[k] / a['total']:6.1%}")
    print(f"{'task':<15} {'teacher':>8} {'fp32':>8} {'int8':>8} {'packed':>8}")
    for t in tasks:
        s = r["student"]
        print(f"{t:<15} {r['teacher'][t]['test_acc']:8.4f} {s['test_acc_fp32'][t]:8.4f} {s['test_acc_int8'][t]:8.4f} "
              f"{s['test_acc_packed_numpy'][t]:8.4f}")
    print(f"report: {Path(args.out).with_suffix('.json')}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    config = _find_repo_file("configs/ctr.yaml")
    if config is None:
        raise EdgerecError("configs/ctr.yaml not found; run the demo from the edgerec checkout.")
    if not args.ctr:
        from edgerec.demo import run_loop

        run_loop(config, Path(args.out), args.dataset, Path(args.edge_pack) if args.edge_pack else None, args.set,
                 quick=args.quick, wait=not args.no_wait, host=args.host, port=args.port)
        return 0
    return _demo_ctr(args)


def _demo_ctr(args: argparse.Namespace) -> int:
    from edgerec.data import registry
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment

    config = _find_repo_file("configs/ctr.yaml")
    if config is None:
        raise EdgerecError("configs/ctr.yaml not found; run the demo from the edgerec checkout.")
    print("== 1/3 data: MovieLens-100K from the recbole==1.2.1 package ==")
    registry.prepare("ml-100k")
    d = registry.describe("ml-100k")
    print(f"   {d['events']:,} ratings, {d['users']} users, {d['items']} items, "
          f"{d['time_range_utc'][0]} .. {d['time_range_utc'][1]} UTC")
    print("== 2/3 train LR, DNN, DIN (DiCycle protocol: leave-last-out, 1 sampled negative, L=50) ==")
    results, cache = [], {}
    extra = ["train.progress=false"] if not sys.stderr.isatty() else []
    for expid in ("LR_ml100k", "DNN_ml100k", "DIN_ml100k"):
        cfg = load_experiment(config, expid, [*extra, *(args.set or [])])
        results.append(run_experiment(cfg, sample_cache=cache))
    print("== 3/3 results ==")
    _print_results(results)
    print("ledger: results/ledger.jsonl   (edgerec results)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgerec", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("data", help="list, prepare, describe or import datasets",
                       description="Datasets come from pinned packages (see docs/data.md), the O2O simulator or "
                                   "your own log (docs/your-data.md); prepared copies are cached as Parquet. "
                                   "`edgerec data ACTION --help` explains each action.")
    acts = d.add_subparsers(dest="action", metavar="{list,prepare,describe,example,import}", required=True)
    ids_help = ("dataset ids: ml-100k, obd, instacart, o2o-sim[:tiny|small|medium|large], an imported NAME or a "
                "dataset.yaml path")
    da = acts.add_parser("list", help="the bundled and imported datasets, and the cache folder")
    da.set_defaults(ids=[])
    da = acts.add_parser("prepare", help="build the Parquet cache of datasets")
    da.add_argument("ids", nargs="*", help=ids_help)
    da.add_argument("--force", action="store_true", help="rebuild even if cached (re-import for yours)")
    da = acts.add_parser("describe", help="statistics, columns and features of datasets")
    da.add_argument("ids", nargs="*", help=ids_help)
    da.add_argument("--json", action="store_true", help="print JSON")
    da = acts.add_parser("example", help="write a small example log (events + items) to import",
                         description="A generated O2O impression log unlike the bundled sets (string ids, "
                                     "millisecond times, local time UTC+8, renamed and extra columns), for trying "
                                     "`edgerec data import` and the walk-through in docs/your-data.md.")
    da.add_argument("ids", nargs="*", metavar="DIR", help="the folder to write (default example-log)")
    da.add_argument("--size", choices=["example", "tiny"], default="example",
                    help="the log's size (example: 800 users, 320 items, 30 days; tiny: seconds)")
    imp = acts.add_parser("import", help="your own log: map its columns, check it, cache it (docs/your-data.md)",
                          description="Writes DATA_DIR/NAME/dataset.yaml and the Parquet cache; after it NAME "
                                      "works wherever a dataset id goes (describe, train, eval, explain, bench, "
                                      "serve, stream, batch). Rows that break a rule are counted, listed in "
                                      "rejected.csv and never imported silently.",
                          epilog="example: edgerec data import myfeed --events events.csv --map user=user_id "
                                 "--map item=item_id --map time=ts --map label=clicked --time-unit ms "
                                 "--tz Asia/Shanghai")
    imp.add_argument("ids", nargs=1, metavar="NAME", help="the name to give your dataset")
    imp.add_argument("--events", metavar="FILE", required=True,
                     help="the event log: CSV, TSV, Parquet or JSON lines, one row per exposure or interaction")
    imp.add_argument("--items", metavar="FILE", help="optional item table: an id column, the title and attributes")
    imp.add_argument("--users", metavar="FILE", help="optional user table: an id column and attributes")
    imp.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                     help="which column is which: user, item, time (required), label (0/1) or kind (event type), "
                          "position, request; side.NAME (an event feature), item.NAME / user.NAME (an attribute "
                          "carried on every event row); items.id / items.title / users.id and items.NAME=COL to "
                          "rename a column of the items / users file. Repeat the flag")
    imp.add_argument("--time-unit", choices=["s", "ms", "iso"], default="s",
                     help="unix seconds, milliseconds, or ISO 8601 text (naive ISO = local time in --tz)")
    imp.add_argument("--tz", default="UTC", help="the log's local time zone (IANA, e.g. Asia/Shanghai, or UTC+8): "
                     "hour and weekday features are local time")
    imp.add_argument("--bucket", action="append", metavar="NAME=N",
                     help="bucket a numeric item / user attribute into N quantile buckets (fit on the training "
                          "period); a float attribute without one is refused")
    imp.add_argument("--click-kinds", default="click", help="with --map kind=COL: kinds that mean a click (label 1)")
    imp.add_argument("--exposure-kinds", default="exposure,impression,view",
                     help="with --map kind=COL: kinds that mean shown, not clicked (label 0)")
    imp.add_argument("--min-user-events", type=int, default=1,
                     help="drop (and report) users with fewer events than this")
    d.set_defaults(func=_cmd_data)

    t = sub.add_parser("train", help="train one experiment of a YAML config",
                       description="Train the experiment EXPID of a YAML config (Base block + named experiments). "
                                   "The best epoch on validation is evaluated on test, saved under output_dir, "
                                   "and appended to the results ledger.")
    t.add_argument("--config", required=True, help="YAML file, e.g. configs/ctr.yaml")
    t.add_argument("--expid", required=True, help="experiment id in that file, e.g. DIN_ml100k")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=5e-4 --set model_args.embedding_dim=64 (repeatable)")
    t.add_argument("--seed", action="append", type=_int_in(0), help="run with this seed (repeat for several; mean ± std is printed)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--nproc", type=_int_in(1), default=1,
                   help="train with N processes (torchrun, DistributedDataParallel: gloo on CPU, NCCL on GPU) "
                        "from out-of-core shards; the same global batch (train.batch_size) is split between them. "
                        "Same as `torchrun --standalone --nproc-per-node N -m edgerec train ...` (default 1)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a saved run on a split",
                       description="Rebuild the run's samples from its config (deterministic from its seed), "
                                   "load model.safetensors and evaluate.")
    e.add_argument("--run", required=True, help="run directory (contains config.json and model.safetensors)")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--metrics", help="comma-separated, e.g. AUC,GAUC,logloss,NDCG@10,HR@10; NAME:repeat / NAME:new on the "
                   "pairs whose positive the user had (not) taken before, e.g. GAUC:repeat")
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("explain", help="plot what a time-aware model learned (PNG)",
                       description="For a DiCycle run: the learned hour/weekday preference (target-time sweep over "
                                   "test samples), the relative-time kernel over 0-14 days and, on o2o-sim, the "
                                   "model's response to the gap since the last same-category behaviour, as PNG + "
                                   "JSON next to the simulator's truth and the log's own CTR lift. For a COUPA run: "
                                   "intensities and examination curves.")
    x.add_argument("--run", required=True, help="run directory")
    x.add_argument("--out", help="output folder (default <run>/explain)")
    x.add_argument("--samples", type=_int_in(1), default=256,
                   help="test samples replayed per category and hour of the week (default 256)")
    x.add_argument("--plots", default="time,kernel,gap",
                   help="DiCycle plots to write, comma list of time, kernel, gap (default %(default)s; "
                        "time is the slow one)")
    x.set_defaults(func=_cmd_explain)

    r = sub.add_parser("results", help="show the results ledger", description="One row per run in the ledger.")
    r.add_argument("--ledger", default="results/ledger.jsonl")
    r.add_argument("--last", type=_int_in(1), default=20, help="show the last N runs")
    r.set_defaults(func=_cmd_results)

    b = sub.add_parser("bench", help="run a benchmark from bench/",
                       description="Run bench/NAME.py; results go to bench/results/NAME*.json. "
                                   "Arguments after NAME are passed to the script (try: edgerec bench ctr --help).")
    b.add_argument("name", help="benchmark name, e.g. ctr")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    b.set_defaults(func=_cmd_bench)

    st = sub.add_parser("stream", help="consume feed events into the online feature store",
                        description="Apply click/exposure events to the feature store, at least once and "
                                    "idempotently: a restart resumes after the offset committed with the state, and "
                                    "replayed events are skipped by event_id. Malformed messages go to "
                                    "<events>.rejected.jsonl (file) or the <topic>.rejected topic (Kafka).")
    st.add_argument("--events", help="event file (JSON lines: event_id, user_id, item_id, ts, kind, position, "
                                     "request_id); the embedded default source")
    st.add_argument("--kafka", metavar="HOST:PORT", help="consume a Kafka topic instead (consumer group --group)")
    st.add_argument("--topic", default="edgerec-events", help="Kafka topic (default %(default)s)")
    st.add_argument("--group", default="edgerec-features", help="Kafka consumer group (default %(default)s)")
    st.add_argument("--partitions", type=_int_in(1), default=2, help="partitions if the topic is created (default 2)")
    st.add_argument("--follow", action="store_true", help="file: keep reading lines appended to --events (tail -f), "
                                                          "e.g. the feedback file of `edgerec serve --feedback-to`")
    st.add_argument("--idle-timeout", type=_seconds_arg, help="Kafka or --follow: stop after this many idle seconds "
                                                        "(default: run on)")
    st.add_argument("--retries", type=_int_in(0), default=10, help="reconnects to an unreachable store before giving up, "
                                                             "1 s apart (default %(default)s)")
    st.add_argument("--export-from", metavar="DATASET", help="first write DATASET's log to --events (e.g. o2o-sim:tiny)")
    _add_store_arg(st)
    _add_dedup_days_arg(st, help="keep applied event ids this many days of event time for the duplicate check; "
                                  "an event older than the newest one minus this window goes to the dead letter with "
                                  "its reason (0 = keep every id forever; default %(default)s)")
    _add_future_skew_arg(st, "dead-letter")
    st.add_argument("--batch-size", type=_int_in(1), default=500, help="events per atomic commit (default %(default)s)")
    st.add_argument("--max-messages", type=_int_in(1), help="stop after this many messages (default: to the end)")
    _add_definition_args(st)
    st.set_defaults(func=_cmd_stream)

    bt = sub.add_parser("batch", help="daily features and training samples from the event log (Parquet)",
                        description="Fold the event log with the ONE feature definition the stream and serving use: "
                                    "user_features (per user and day), item_features (cumulative per item and day) "
                                    "and samples (one row per exposure, features strictly before it). polars is the "
                                    "embedded default; --engine spark runs the same job on Spark and writes "
                                    "identical files.")
    bt.add_argument("--events", help="event file (JSON lines, as `edgerec stream` reads)")
    bt.add_argument("--dataset", help="or a dataset id whose log to use, e.g. o2o-sim:tiny")
    bt.add_argument("--out", default="runs/batch", help="output folder (default %(default)s)")
    bt.add_argument("--engine", choices=["polars", "spark"], default="polars",
                    help="polars (embedded, default) or spark (--spark-master); with --shards: spark builds "
                         "impression-protocol shards, the same files as the default engine")
    _add_future_skew_arg(bt, "leave out of the batch")
    _add_dedup_days_arg(bt, help="--events: leave out what `edgerec stream --dedup-days` would dead-letter as late "
                                  "(events older than the newest one before them minus this many days); 0 = fold "
                                  "every event (default %(default)s)")
    bt.add_argument("--spark-master", default="local[2]", help="Spark master URL (default %(default)s)")
    bt.add_argument("--shards", metavar="CONFIG:EXPID",
                    help="instead of the daily features, write the out-of-core training samples of that experiment "
                         "(Parquet row groups + a memory-mapped behaviour store) to OUT/shards, from the same sample "
                         "builders `edgerec train` uses; train on them with --set data.shards=OUT/shards. The input "
                         "is the experiment's dataset (import your own log first); --engine spark builds them "
                         "in a Spark job (impression protocol)")
    bt.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --shards: a config override, as for train")
    _add_definition_args(bt)
    bt.set_defaults(func=_cmd_batch)

    sv = sub.add_parser("serve", help="two-stage recommendation service over HTTP (FastAPI + uvicorn)",
                        description="Stage 1 retrieves and pre-ranks candidates by the request's hour of the week "
                                    "and online CTR; stage 2 ranks them with the trained model over the user's "
                                    "online features from --store. POST /feedback sends events to the stream "
                                    "(--feedback-to FILE or --kafka), or applies them in-process when neither is "
                                    "given. Schema at /openapi.json, try-it page at /docs.")
    sv.add_argument("--run", help="trained run folder (COUPA or DiCycle), e.g. runs/COUPA_o2o/<stamp>-seed1")
    sv.add_argument("--dataset", help="item catalogue (default: the run's dataset)")
    _add_store_arg(sv)
    sv.add_argument("--feedback-to", metavar="FILE", help="append /feedback events to this JSON-lines file "
                                                           "(what `edgerec stream --events FILE` consumes)")
    sv.add_argument("--kafka", metavar="HOST:PORT", help="publish /feedback events to Kafka instead")
    sv.add_argument("--topic", default="edgerec-events", help="Kafka topic (default %(default)s)")
    _add_future_skew_arg(sv, "POST /feedback refuses (422)")
    _add_dedup_days_arg(sv, help="the stream's --dedup-days (give the same value): POST /feedback refuses (422) an "
                                  "event the stream would dead-letter as older than its window (default %(default)s; "
                                  "0 = no bound)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=_int_in(1, 65535), default=8000)
    sv.add_argument("--max-body-mb", type=float, default=2.0,
                    help="larger request bodies get HTTP 413 (megabytes; default %(default)s, room for the 10,000 "
                         "events one /feedback may carry)")
    sv.add_argument("--workers", type=_int_in(1, 64), default=1, help="uvicorn worker processes (default %(default)s); "
                    "more than 1 needs a shared --store (sqlite: or redis://)")
    sv.add_argument("--threads", type=_int_in(1), default=1, help="torch (or ONNX Runtime) threads per worker "
                    "(default %(default)s)")
    sv.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                    help="stage 2 on PyTorch (default) or on ONNX Runtime: the run's export in RUN/onnx, made "
                         "first (checked against PyTorch) when it is missing or older than the weights. Measured: "
                         "1.4x PyTorch's speed for COUPA and DiCycle, on par for DIN; COUPA's service at 0.57x "
                         "the CPU per request (docs/results.md)")
    sv.add_argument("--index-period", choices=["all", "train"], default="all",
                    help="stage 1's per-hour click counts from the whole log (all, default: a live service) or "
                         "only from the run's training period (train: replaying held-out events for evaluation, "
                         "so stage 1 knows nothing of the test period)")
    sv.add_argument("--edge-pack", metavar="FILE", help="an EI-BERT file from `edgerec compress` (with the "
                    "item_category head): the console's Device view re-ranks with it")
    sv.add_argument("--ledger", metavar="FILE", help="results ledger for the console's Runs view (default: the "
                    "run's own ledger)")
    sv.add_argument("--log-level", default="warning")
    sv.add_argument("--openapi", metavar="PATH", help="write the OpenAPI schema to PATH (without --run: and exit)")
    sv.set_defaults(func=_cmd_serve)

    pr = sub.add_parser("predict", help="score raw rows (user, item, time) with a trained run, to Parquet",
                        description="Batch scoring: each row's history is the run's dataset log strictly before its "
                                    "time (as the service sees it); users and items the run never saw are scored "
                                    "with out-of-vocabulary vectors (known_user / known_item say which). The input "
                                    "holds your own ids and times, by default in your log's format: the columns "
                                    "and time unit its `data import` mapped, else user_id, item_id, ts in unix "
                                    "seconds; any other columns come back unchanged beside the score.")
    pr.add_argument("--run", required=True, help="a run folder from `edgerec train`")
    pr.add_argument("--input", required=True, help="rows to score: CSV, TSV, Parquet or JSON lines")
    pr.add_argument("--out", default="scores.parquet", help="output Parquet: the input columns + score")
    pr.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                    help="the input's user, item and time columns, e.g. --map user=uid --map time=event_ms "
                         "(default: the import's, else user_id, item_id, ts)")
    pr.add_argument("--time-unit", choices=["s", "ms", "iso"], default=None,
                    help="how the time is written (default: the import's --time-unit, else s; ISO without a "
                         "zone = local time of the run's dataset)")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="export a run's stage-2 ranker as ONNX, for serving outside Python",
                        description="Writes OUT/model.onnx (one request's history and C candidates -> logit and "
                                    "score, C dynamic), OUT/export.json (inputs, outputs, history rule, time zone, "
                                    "out-of-vocabulary indices, checksums) and the id tables ids_item.parquet / "
                                    "ids_user.parquet (your ids -> the model's indices). Before anything is written "
                                    "the graph is run on ONNX Runtime against PyTorch on the run's validation "
                                    "requests (max |logit difference| <= 1e-4, same top 20), an empty history "
                                    "and an unknown item included. DIN, DiCycle and COUPA runs export. "
                                    "`edgerec serve --engine onnx` serves this graph. With --pack instead: the "
                                    "EI-BERT device model as OUT/eibert.onnx with the pack's int8 weights "
                                    "(DequantizeLinear per row), OUT/vocab.txt and OUT/export.json, checked against "
                                    "the numpy edge runtime first (max |logit difference| <= 1e-4).")
    ex.add_argument("--run", help="a run folder from `edgerec train` (DIN, DiCycle or COUPA)")
    ex.add_argument("--pack", help="an EI-BERT .pack from `edgerec compress` (default OUT: PACK's folder, "
                    "<name>_onnx)")
    ex.add_argument("--format", choices=["onnx"], default="onnx", help="artifact format (default %(default)s)")
    ex.add_argument("--out", help="output folder (default RUN/onnx, where `serve --engine onnx` looks; for --pack "
                    "<pack name>_onnx beside it)")
    ex.set_defaults(func=_cmd_export)

    c = sub.add_parser("compress", help="build the EI-BERT on-device NLU artifact (prune, distill, int8, pack)",
                       description="Fine-tune the all-MiniLM-L6-v2 teacher per task (cached), prune the vocabulary by "
                                   "attention importance, distil a multi-task student (kd | tinybert | cross), quantize "
                                   "to int8 and pack one checksummed file; prints its byte breakdown and accuracies. "
                                   "Teachers, general distillation and datasets are cached under $EDGEREC_CACHE "
                                   "(default ~/.cache/edgerec; datasets: $EDGEREC_DATA_DIR).")
    c.add_argument("--method", choices=["kd", "tinybert", "cross"], default="cross")
    c.add_argument("--tasks", help="comma-separated subset of sentiment,trec,spam,item_category and your --task "
                   "names (default: your --task tasks if any, else the four bundled ones)")
    c.add_argument("--task", action="append", metavar="NAME=FILE",
                   help="your own task: a CSV, TSV or JSON-lines file with `text` and `label` columns and an optional "
                        "`split` column (train/valid/test; else 80/10/10); or NAME=dataset:ID for an imported "
                        "dataset's item titles -> category. Repeat for a multi-task file")
    c.add_argument("--dataset", help="an imported dataset whose item table (title, category) becomes the "
                   "item_category task instead of the bundled one")
    c.add_argument("--seed", type=_int_in(0), default=1, help="student seed (default %(default)s)")
    c.add_argument("--vocab", type=_int_in(256), default=7000, help="tokens kept by pruning (default %(default)s)")
    c.add_argument("--vocab-floor", type=_int_in(0),
                   help="the N most frequent everyday-language pieces (movie dialogue) that pruning keeps whatever "
                        "the task texts hold, so a narrow task still reads common wording (default 2000 with "
                        "--task or --dataset, else 0, the bundled setting); the report says what it costs in bytes")
    c.add_argument("--embedding-bits", type=int, choices=[8, 4], default=8)
    c.add_argument("--epochs", type=_int_in(1), help="distillation epochs (default 6)")
    c.add_argument("--augment", type=_int_in(0, 64), default=6,
                   help="teacher-labelled perturbed copies per training sentence (word masking, word replacement, "
                        "n-gram windows; soft labels only); default %(default)s, the measured setting; 0 = off")
    c.add_argument("--augment-replace", type=float,
                   help="probability that a single-piece word of a copy is swapped for one of its 15 nearest words "
                        "in the teacher's embeddings (TinyBERT-style); default 0.4")
    c.add_argument("--augment-tasks",
                   help="tasks that get copies (comma-separated); default sentiment, the task that needs them")
    c.add_argument("--augment-rotate", action=argparse.BooleanOptionalAction,
                   help="epoch e trains on copy e mod N only: a fresh copy per epoch for the cost of one "
                        "(default on; --no-augment-rotate trains on all N copies every epoch)")
    c.add_argument("--general-epochs", type=_int_in(0), default=2,
                   help="epochs of general distillation on unlabeled text before the task phase (default %(default)s, "
                        "the measured setting; about 16 min on 2 cores the first time, then cached per student shape "
                        "and vocabulary); 0 = off")
    c.add_argument("--teacher-epochs", type=_int_in(0), default=3, help="0 = no fine-tuning (smoke runs)")
    c.add_argument("--limit", type=_int_in(1), help="first N sentences of each split, and 10 N unlabeled sentences for "
                   "general distillation (smoke runs)")
    c.add_argument("--out", default="runs/eibert/eibert.pack")
    c.set_defaults(func=_cmd_compress)

    m = sub.add_parser("demo", help="the main job: the edge-cloud loop, step by step (what `make demo` runs)",
                       description="simulate o2o-sim:small -> batch (polars) -> train COUPA, PAL and no-position "
                                   "side by side and score them against the simulator's truth -> explain -> stream "
                                   "into SQLite -> serve (FastAPI, two stages) -> feedback -> EI-BERT re-ranks on the "
                                   "device -> the console in your browser at the printed address, until Ctrl-C. "
                                   "Training takes about 4 minutes on 2 cores, the first run 9 to 10 (it also fine-tunes "
                                   "the EI-BERT teacher once, then cached); runs already in --out's ledger with the "
                                   "same config at the same commit are loaded, not retrained. --quick: the smoke path "
                                   "(o2o-sim:tiny, COUPA only, 2 epochs, under 2 minutes). --ctr instead trains LR, "
                                   "DNN and DIN on MovieLens-100K and prints the table.")
    m.add_argument("--quick", action="store_true", help="smoke path: a 2-epoch COUPA on o2o-sim:tiny, no baselines")
    m.add_argument("--no-wait", action="store_true", help="exit after the last step instead of serving the console")
    m.add_argument("--host", default="127.0.0.1", help="where the console listens (default %(default)s)")
    m.add_argument("--port", type=_int_in(1, 65535), help="console port (default 8000, or a free one if it is taken)")
    m.add_argument("--ctr", action="store_true", help="the CTR baseline demo on MovieLens-100K instead")
    m.add_argument("--dataset", help="simulated feed for the loop (default o2o-sim:small; with --quick o2o-sim:tiny)")
    m.add_argument("--edge-pack", help="an EI-BERT file from `edgerec compress` (default: build a small one)")
    m.add_argument("--out", default="runs/demo", help="working folder (default %(default)s)")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="override config keys of the training run(s)")
    m.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # train --nproc starts ranks with it
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except EdgerecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
