"""The main job (`make demo`): the whole edge-cloud loop on the embedded defaults, step by step.

simulate -> batch (polars) -> train (COUPA) -> stream (file -> SQLite) -> serve (FastAPI, two
stages) -> feedback (HTTP -> event file -> stream) -> edge (EI-BERT re-ranks on the device).
Nothing to start by hand: the service runs on a free 127.0.0.1 port inside this process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def run_loop(config: Path, out: Path, dataset: str = "o2o-sim:tiny", edge_pack: Path | None = None,
             overrides: list[str] | None = None) -> dict:
    import httpx2
    import uvicorn

    from edgerec.data import registry
    from edgerec.features.batch import events_table, run_batch
    from edgerec.features.definition import Event, FeatureDefinition
    from edgerec.features.store import SQLiteStore
    from edgerec.serve.app import create_app
    from edgerec.serve.ports import free_port
    from edgerec.serve.service import CandidateIndex, FileEventSink, Ranker, RecommendService
    from edgerec.serve.stream import FileEventSource, events_from_log, run_stream, write_event_file
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment

    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    t0 = time.time()

    print(f"== 1/7 simulate: {dataset} (seeded O2O feed with known truth) ==")
    ds = registry.load(dataset)
    events = list(events_from_log(ds.events))
    ev_path = write_event_file(events, out / "events.jsonl")
    print(f"   {ds.events.num_rows:,} exposures -> {len(events):,} wire events in {ev_path}")

    print("== 2/7 batch: daily features + training samples with polars (Parquet) ==")
    definition = FeatureDefinition(max_len=10, n_positions=int(ds.events.column("position").to_numpy().max()))
    written = run_batch(events_table(events), out / "batch", definition, "polars")
    import pyarrow.parquet as pq

    for name, path in written.items():
        print(f"   {name:<14} {pq.ParquetFile(path).metadata.num_rows:>8,} rows  {path}")

    print("== 3/7 train: COUPA (point process + personalized position selector) ==")
    cfg = load_experiment(config, "COUPA_test", ["train.epochs=2", "train.progress=false", f"dataset={dataset}",
                                                 f"output_dir={out / 'runs'}", f"ledger={out / 'ledger.jsonl'}",
                                                 *(overrides or [])])
    res = run_experiment(cfg, log=lambda *a, **k: None)
    print(f"   test AUC {res.test['AUC']:.4f}, GAUC {res.test['GAUC']:.4f} (served score, no position; a 2-epoch "
          f"smoke model on the tiny feed: bench/coupa.py has the real numbers); run {res.run_dir}")
    summary["test_auc"] = res.test["AUC"]

    print("== 4/7 stream: the event file -> SQLite online feature store (at-least-once, idempotent) ==")
    db = out / "features.db"
    if db.exists():
        db.unlink()
    store = SQLiteStore(db)
    st = run_stream(FileEventSource(ev_path), store, definition, batch_size=1000)
    print(f"   {st.applied:,} events applied in {st.batches} atomic batches, {st.duplicates} duplicates, "
          f"{st.rejected} rejected")

    print("== 5/7 serve: two-stage FastAPI service on 127.0.0.1 ==")
    ranker = Ranker(res.trained, res.sample_set, definition)
    fb_path = out / "feedback.jsonl"
    fb_path.write_text("")
    service = RecommendService(ranker, CandidateIndex.from_dataset(ds), store, FileEventSink(fb_path))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    for _ in range(100):
        try:
            client.get("/health").raise_for_status()
            break
        except Exception:
            time.sleep(0.05)
    user = int(events[-1].user_id)
    now = int(events[-1].ts) + 3600
    r = client.post("/recommend", json={"user_id": user, "ts": now, "n_candidates": 60, "k": 8}).json()
    print(f"   user {user}, {r['history_length']} clicks in history, stage 1 {r['timing_ms']['stage1']:.1f} ms, "
          f"stage 2 {r['timing_ms']['stage2']:.1f} ms over {r['n_candidates']} candidates:")
    for k, it in enumerate(r["items"][:5], 1):
        print(f"   {k}. {it['title']:<34} score {it['score']:.3f}")
    bad = client.post("/recommend", json={"user_id": user, "k": 0})
    print(f"   a bad request (k=0) -> HTTP {bad.status_code}: {bad.json()['detail'][0]['msg']}")

    print("== 6/7 feedback: the user clicks the top item -> /feedback -> event file -> stream ==")
    top = r["items"][0]
    before = store.user(user).clicks
    fb = [Event(f"demo-exp-{now}", user, top["item_id"], now, "exposure", 1),
          Event(f"demo-click-{now}", user, top["item_id"], now + 5, "click", 1)]
    print(f"   POST /feedback -> {client.post('/feedback', json={'events': [e.to_dict() for e in fb]}).json()}")
    st2 = run_stream(FileEventSource(fb_path), store, definition)
    after = store.user(user)
    print(f"   stream applied {st2.applied} events; user {user} clicks {before} -> {after.clicks}, "
          f"newest history item {after.recent_item[-1]} ({top['title']})")
    r2 = client.post("/recommend", json={"user_id": user, "ts": now + 60, "n_candidates": 60, "k": 8}).json()
    server.should_exit = True

    print("== 7/7 edge: EI-BERT on the device re-ranks the cloud's list for a typed query ==")
    from edgerec.serve.edge.device import Device, DeviceEvent
    from edgerec.serve.edge.runtime import EdgeModel

    pack = edge_pack or out / "eibert_item_category.pack"
    if not Path(pack).exists():
        from edgerec.compress.pipeline import CompressConfig, build

        print("   building a small EI-BERT (item_category head only; teacher fine-tuned once, cached) ...")
        build(CompressConfig(method="cross", tasks=("item_category",), teacher_epochs=3, distill={"epochs": 4}),
              pack, log=lambda *a: None, progress=False)
    model = EdgeModel.load(pack)
    device = Device(user_id=user, model=model)
    titles = dict(zip(service.index.item_ids.tolist(), service.index.titles))
    for item, ts, pos in zip(after.recent_item, after.recent_ts, after.recent_position):
        device.record(DeviceEvent(item, titles.get(item, ""), ts, "click", pos or None))
    query = "milk tea with boba"
    reranked = device.rerank(r2["items"], now=now + 60, query=query)
    print(f"   edge model {Path(pack).stat().st_size / 1e6:.2f} MB; query {query!r}:")
    for k, it in enumerate(reranked[:5], 1):
        print(f"   {k}. {it['title']:<34} cloud {it['score']:.3f} -> edge {it['edge_score']:.3f} ({it['edge_category']})")
    print(f"   uploaded (aggregates only): {device.upload()}")
    print(f"done in {time.time() - t0:.0f} s; everything is under {out}")
    summary.update(feedback_applied=st2.applied, reranked=[x["item_id"] for x in reranked])
    return summary
