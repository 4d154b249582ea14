"""The main job (`make demo`): the whole edge-cloud loop on the embedded defaults, step by step.

simulate -> batch (polars) -> train COUPA with its position baselines and score them against the
simulator's truth -> explain -> stream (file -> SQLite) -> serve (FastAPI, two stages, the console
at /) -> feedback (HTTP -> event file -> stream) -> edge (EI-BERT re-ranks on the device) -> the
console stays up until Ctrl-C.

Two sizes: the default trains on o2o-sim:small (949k exposures; configs/ctr.yaml COUPA_demo, its PAL
and no-position variants alongside, a few minutes on 2 cores; runs already in the demo's ledger with
the same config and code are loaded instead of retrained). `quick=True` is the smoke path for CI: a
2-epoch COUPA_test on o2o-sim:tiny, no baselines. Nothing to start by hand: the service and the stream
run as threads of this process (edgerec/serve/live.py) on 127.0.0.1.
"""

from __future__ import annotations

import time
from pathlib import Path

# The position baselines trained beside COUPA (bench/coupa.py has all five variants over 3 seeds)
VARIANTS: dict[str, list[str]] = {"COUPA": [], "PAL": ["model_args.position_mode=pal"],
                                  "no position": ["model_args.position_mode=none"]}


def run_loop(config: Path, out: Path, dataset: str | None = None, edge_pack: Path | None = None,
             overrides: list[str] | None = None, quick: bool = False, wait: bool = False,
             host: str = "127.0.0.1", port: int | None = None) -> dict:
    """Run every step and return a summary; `wait`: keep serving the console until Ctrl-C."""
    import httpx2

    from edgerec.data import registry
    from edgerec.features.batch import events_table, run_batch
    from edgerec.features.definition import Event, FeatureDefinition
    from edgerec.features.store import SQLiteStore
    from edgerec.serve.console import ConsoleOptions
    from edgerec.serve.live import LiveService
    from edgerec.serve.service import CandidateIndex, FileEventSink, Ranker, RecommendService
    from edgerec.serve.stream import FileEventSource, events_from_log, run_stream, write_event_file

    dataset = dataset or ("o2o-sim:tiny" if quick else "o2o-sim:small")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    t0 = time.time()
    n = 9
    summary["seconds"] = {}
    marks = [("start", time.time())]

    def step(title: str) -> None:
        """Print the next step's header; the previous step's wall time goes into summary["seconds"]."""
        name, since = marks[-1]
        if name != "start":
            summary["seconds"][name] = round(time.time() - since, 1)
            print(f"   ({summary['seconds'][name]:.0f} s)")
        marks.append((title.split(":")[0], time.time()))
        print(f"== {len(marks) - 1}/{n} {title} ==")

    step(f"simulate: {dataset} (seeded O2O feed with known truth)")
    ds = registry.load(dataset)
    events = list(events_from_log(ds.events))
    ev_path = write_event_file(events, out / "events.jsonl")
    print(f"   {ds.events.num_rows:,} exposures -> {len(events):,} wire events in {ev_path}")

    step("batch: daily features + training samples with polars (Parquet)")
    variants = {"COUPA": []} if quick else VARIANTS
    expid = "COUPA_test" if quick else "COUPA_demo"
    cfg = _config(config, expid, dataset, out, overrides or [], progress=not quick)
    # ONE feature definition for batch, stream and serving, with the trained model's history length L
    definition = FeatureDefinition(max_len=cfg.data.max_len, n_positions=int(ds.events.column("position").to_numpy().max()),
                                   tz=ds.tz)
    written = run_batch(events_table(events), out / "batch", definition, "polars")
    import pyarrow.parquet as pq

    for name, path in written.items():
        print(f"   {name:<14} {pq.ParquetFile(path).metadata.num_rows:>8,} rows  {path}")

    step(f"train: {', '.join(variants)} ({expid}; the served score never sees the position)")
    results = {name: _train(_config(config, expid, dataset, out, [*(overrides or []), *extra], progress=not quick),
                            progress=not quick)
               for name, extra in variants.items()}
    coupa = results["COUPA"]
    _print_truth(results, ds, quick)
    summary["test_auc"] = coupa["test"]["AUC"]
    summary["truth"] = {k: v.get("truth") for k, v in results.items()}

    step("explain: what COUPA learned, as plots (the console's Runs view shows them)")
    from edgerec.train.explain import explain_run

    for path in explain_run(coupa["run_dir"]):
        print(f"   wrote {path}")

    step("stream: the event file -> SQLite online feature store (at-least-once, idempotent)")
    db = out / "features.db"
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    store = SQLiteStore(db)
    st = run_stream(FileEventSource(ev_path), store, definition, batch_size=5000)
    print(f"   {st.applied:,} events applied in {st.batches} atomic batches, {st.duplicates} duplicates, "
          f"{st.rejected} rejected")

    step(f"serve: two-stage FastAPI service and the console on {host}")
    ranker = Ranker(coupa["model"], coupa["samples"], definition)
    fb_path = out / "feedback.jsonl"
    fb_path.write_text("")
    service = RecommendService(ranker, CandidateIndex.from_dataset(ds), store, FileEventSink(fb_path))
    pack = Path(edge_pack) if edge_pack else _edge_pack(out)
    console = ConsoleOptions(edge_pack=str(pack), ledger=str(out / "ledger.jsonl"))
    live = LiveService(service, db, fb_path, console=console, host=host, port=_port(host, port)).__enter__()
    client = httpx2.Client(base_url=live.url, timeout=30)
    try:
        user = int(events[-1].user_id)
        now = int(events[-1].ts) + 3600
        r = client.post("/recommend", json={"user_id": user, "ts": now, "n_candidates": 60, "k": 8}).json()
        print(f"   user {user}, {r['history_length']} clicks in history, stage 1 {r['timing_ms']['stage1']:.1f} ms, "
              f"stage 2 {r['timing_ms']['stage2']:.1f} ms over {r['n_candidates']} candidates:")
        for k, it in enumerate(r["items"][:5], 1):
            print(f"   {k}. {it['title']:<34} score {it['score']:.3f}")
        bad = client.post("/recommend", json={"user_id": user, "k": 0})
        print(f"   a bad request (k=0) -> HTTP {bad.status_code}: {bad.json()['detail'][0]['msg']}")

        step("feedback: the user clicks the top item -> /feedback -> event file -> stream (running)")
        top = r["items"][0]
        before = store.user(user).clicks
        fb = [Event(f"demo-exp-{now}", user, top["item_id"], now, "exposure", 1),
              Event(f"demo-click-{now}", user, top["item_id"], now + 5, "click", 1)]
        t_sent = time.perf_counter()
        print(f"   POST /feedback -> {client.post('/feedback', json={'events': [e.to_dict() for e in fb]}).json()}")
        while store.user(user).clicks == before and time.perf_counter() - t_sent < 30:
            time.sleep(0.02)
        lag = time.perf_counter() - t_sent
        after = store.user(user)
        if after.clicks == before:
            from edgerec.errors import EdgerecError

            raise EdgerecError(f"the stream did not apply the click within 30 s ({live.stream_error or 'no error'}); "
                               f"see {fb_path} and {fb_path.with_suffix('.rejected.jsonl')}")
        print(f"   the stream applied it {lag:.2f} s later; user {user} clicks {before} -> {after.clicks}, "
              f"newest history item {after.recent_item[-1]} ({top['title']})")
        r2 = client.post("/recommend", json={"user_id": user, "ts": now + 60, "n_candidates": 60, "k": 8}).json()

        step("edge: EI-BERT on the device re-ranks the cloud's list for a typed query")
        summary["reranked"] = _edge(pack, user, service, after, r2, now + 60)
        summary["feedback_applied"] = after.clicks - before
        step(f"console: {live.url}/  (feed, feedback, device and runs in the browser)")
        summary["seconds"]["total"] = round(time.time() - t0, 1)
        print(f"done in {time.time() - t0:.0f} s; everything is under {out}")
        if wait:
            print(f"   serving {live.url}/ until Ctrl-C")
            live.wait()
    finally:
        client.close()
        live.stop()
        store.close()
    summary["console"] = live.url
    return summary


def _port(host: str, port: int | None) -> int:
    """The asked port; by default (None) 8000, or a free one when 8000 is taken; 0: any free port."""
    import socket

    from edgerec.errors import EdgerecError
    from edgerec.serve.ports import free_port

    if port == 0:
        return free_port()
    want = port or 8000
    with socket.socket() as s:
        try:
            s.bind((host, want))
            return want
        except OSError:
            if port:
                raise EdgerecError(f"--port {port} is in use on {host}; pick another, or leave --port out") from None
            return free_port()


def _config(config: Path, expid: str, dataset: str, out: Path, overrides: list[str], progress: bool):
    from edgerec.train.config import load_experiment

    return load_experiment(config, expid, [f"dataset={dataset}", f"output_dir={out / 'runs'}",
                                           f"ledger={out / 'ledger.jsonl'}", f"train.progress={str(progress).lower()}",
                                           *overrides])


def _train(cfg, progress: bool) -> dict:
    """Train one variant, or load it when the demo's ledger has a run of the same config at the same
    commit (edits not yet committed are not seen: delete --out's runs to retrain after one)."""
    from edgerec.train.experiment import load_run, run_experiment
    from edgerec.train.ledger import git_commit, read_ledger

    label = cfg.model_args.get("position_mode", "personalized")
    code = git_commit()
    for rec in reversed(read_ledger(cfg.ledger)):
        if rec.get("config_hash") == cfg.hash() and rec.get("seed") == cfg.train.seed and code and rec.get("git") == code:
            try:
                _, model, samples = load_run(rec["run_dir"])
            except Exception:  # noqa: BLE001 - a moved or stale run: train again
                continue
            print(f"   {label}: loaded {rec['run_dir']} (same config and code; delete it to retrain)")
            return {"model": model, "samples": samples, "test": rec["test"], "run_dir": rec["run_dir"],
                    "cached": True}
    res = run_experiment(cfg, log=(print if progress else (lambda *a, **k: None)))
    return {"model": res.trained, "samples": res.sample_set, "test": res.test, "run_dir": res.run_dir,
            "cached": False, "seconds": res.wall_seconds}


def _print_truth(results: dict, ds, quick: bool) -> None:
    """Each variant's truth metrics (o2o-sim knows every exposure's true relevance), best first."""
    from edgerec.train.truth import evaluate_against_truth

    for name, r in results.items():
        r["truth"] = evaluate_against_truth(r["model"], r["samples"], ds)
    print(f"   {'variant':<12} {'relevance AUC (truth)':>22} {'NDCG@10 (truth)':>16} {'exam. curve MAE':>16} "
          f"{'logged test AUC':>16}")
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["truth"]["relevance_auc"]):
        t = r["truth"]
        mae = t.get("examination_shape")
        mae_s = "n/a" if not mae else " / ".join(f"{v['mae']:.3f}" for v in mae.values())
        print(f"   {name:<12} {t['relevance_auc']:>22.4f} {t['request_ndcg@10']:>16.4f} {mae_s:>16} "
              f"{r['test']['AUC']:>16.4f}")
    if quick:
        print("   (a 2-epoch smoke model on the tiny feed; `make demo` without --quick trains a real one)")
    else:
        print("   one seed each; 3 seeds of all five variants: bench/coupa.py and docs/results.md. Relevance AUC "
              "scores the served ranking against the TRUE relevance; logged AUC is biased by position")


def _edge_pack(out: Path) -> Path:
    pack = out / "eibert_item_category.pack"
    if not pack.exists():
        from edgerec.compress.pipeline import CompressConfig, build

        print("   building a small EI-BERT (item_category head only; teacher fine-tuned once, cached) ...")
        build(CompressConfig(method="cross", tasks=("item_category",), teacher_epochs=3, distill={"epochs": 4}),
              pack, log=lambda *a: None, progress=False)
    return pack


def _edge(pack: Path, user: int, service, state, reply: dict, now: int) -> list:
    from edgerec.serve.edge.device import Device
    from edgerec.serve.edge.runtime import EdgeModel

    device = Device(user_id=user, model=EdgeModel.load(pack))
    device.record_clicks(state, dict(zip(service.index.item_ids.tolist(), service.index.titles)))
    query = "milk tea with boba"
    reranked = device.rerank(reply["items"], now=now, query=query)
    print(f"   edge model {Path(pack).stat().st_size / 1e6:.2f} MB; query {query!r}:")
    for k, it in enumerate(reranked[:5], 1):
        print(f"   {k}. {it['title']:<34} cloud {it['score']:.3f} -> edge {it['edge_score']:.3f} ({it['edge_category']})")
    print(f"   uploaded (aggregates only): {device.upload()}")
    return [x["item_id"] for x in reranked]
