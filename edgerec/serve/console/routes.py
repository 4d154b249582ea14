"""The console's page and JSON endpoints, mounted on the service's FastAPI app (see __init__.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from edgerec.errors import EdgerecError
from edgerec.features.definition import TS_MAX
from edgerec.features.time import SECONDS_PER_DAY, SECONDS_PER_HOUR, local_clock
from edgerec.serve.console import explain

STATIC = Path(__file__).parent / "static"
_STRICT = ConfigDict(extra="forbid", strict=True)
HISTORY_SHOWN = 20  # most recent clicks listed on the page
USERS_LISTED = 200  # users offered in the picker (any id can be typed)


@dataclass
class ConsoleOptions:
    """What the console shows beyond the service itself (`edgerec serve --edge-pack / --ledger`)."""

    edge_pack: str | None = None  # an EI-BERT file from `edgerec compress`: the Device view
    ledger: str | None = None  # the results ledger (JSON lines) for the Runs view


def _id_type():
    from edgerec.serve.app import Id  # the service's own id type: the same bounds as /recommend

    return Id


class FeedRequest(BaseModel):
    model_config = _STRICT
    user_id: _id_type()
    ts: int = Field(..., ge=0, le=TS_MAX, description="request time, unix seconds")
    channel: str = Field("all", max_length=64)
    n_candidates: int = Field(100, ge=1, le=1000)
    k: int = Field(10, ge=1, le=50)


class DeviceRequest(FeedRequest):
    query: str = Field("", max_length=200, description="what the user typed on the phone")


class UserRequest(BaseModel):
    model_config = _STRICT
    user_id: _id_type()


def _load_edge(path: str | None):
    if not path:
        return None
    from edgerec.serve.edge.device import TASK
    from edgerec.serve.edge.runtime import EdgeModel

    try:
        model = EdgeModel.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise EdgerecError(f"--edge-pack {path}: not an EI-BERT file this edgerec can read ({type(e).__name__}: "
                           f"{e}); make one with `edgerec compress`") from None
    if TASK not in model.tasks:
        raise EdgerecError(f"--edge-pack {path}: the device view needs the {TASK!r} head; it has "
                           f"{sorted(model.tasks)} (edgerec compress --tasks {TASK},...)")
    return model


def read_ledger_rows(path: str | None) -> tuple[list[dict], int]:
    """The ledger's runs, oldest first, and how many lines could not be read (shown, not fatal)."""
    if not path or not Path(path).is_file():
        return [], 0
    rows, bad = [], 0
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("run_dir", ""), (str, type(None))) and \
                isinstance(rec.get("model", ""), (str, type(None))):
            rows.append(rec)
        else:  # not a run record this console can show
            bad += 1
    return rows, bad


def _plots(run_dir) -> list[Path]:
    if not isinstance(run_dir, str) or not run_dir:
        return []
    folder = Path(run_dir) / "explain"
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def mount_console(app, service, options: ConsoleOptions | None) -> None:
    """Add the console to `app`: `/` (the page), /console/static/*, and the /console/api/* endpoints."""
    options = options or ConsoleOptions()
    edge = _load_edge(options.edge_pack)  # at start-up: a bad file fails `edgerec serve`, readably
    router = APIRouter(include_in_schema=False)
    cat = dict(zip(service.index.item_ids.tolist(), service.index.channel.tolist()))  # item id -> channel, once
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    @router.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/console/api/meta")
    async def meta():
        return _guard("console", lambda: _meta(service, edge, options))

    @router.post("/console/api/feed")
    async def feed(req: FeedRequest):
        return _guard("console", lambda: _feed(service, req, cat))

    @router.post("/console/api/history")
    async def history(req: UserRequest):
        def work():
            state, rows = _history(service, _user(service, req.user_id), cat)
            return {"history": rows, "clicks": int(state.clicks)}

        return _guard("console", work)

    @router.post("/console/api/device")
    async def device(req: DeviceRequest):
        if edge is None:
            raise HTTPException(status_code=409, detail="no edge model loaded: start the service with "
                                                        "`edgerec serve --edge-pack FILE` (a file from `edgerec compress`)")
        return _guard("edge model", lambda: _device(service, edge, options, req))

    @router.get("/console/api/runs")
    async def runs():
        rows, bad = read_ledger_rows(options.ledger)
        return {"ledger": options.ledger, "unreadable_lines": bad,
                "runs": [_run_row(i, r) for i, r in enumerate(rows)]}

    @router.get("/console/api/runs/{i}")
    async def run_plots(i: int):
        rec = _ledger_row(options, i)
        plots = _plots(rec.get("run_dir"))
        return {"i": i, "run": _run_row(i, rec), "command": f"edgerec explain --run {rec.get('run_dir')}",
                "plots": [{"name": p.name, "url": f"/console/runs/{i}/plot/{p.name}"} for p in plots]}

    @router.get("/console/runs/{i}/plot/{name}")
    async def plot(i: int, name: str):
        match = [p for p in _plots(_ledger_row(options, i).get("run_dir")) if p.name == name]  # never a path
        if not match:
            raise HTTPException(status_code=404, detail=f"run {i} has no plot {name!r}; see /console/api/runs/{i}")
        return FileResponse(match[0], media_type="image/png")

    app.include_router(router)


def _guard(part: str, work):
    """Run `work`; the client's mistakes (an unknown id or channel) are 422 naming the field, anything
    else is a failure of the model or store: 503 with one line, never a 500. Console failures are
    logged but not counted in the service's /health, which reports the API's own requests."""
    import logging

    from edgerec.serve.service import IdError, UnknownChannel

    try:
        return work()
    except IdError as e:
        raise HTTPException(status_code=422, detail=[{"loc": ["body", e.field or "user_id"], "msg": str(e),
                                                      "type": "value_error"}]) from None
    except UnknownChannel as e:
        raise HTTPException(status_code=422, detail=[{"loc": ["body", "channel"], "msg": str(e),
                                                      "type": "value_error"}]) from None
    except Exception as e:  # noqa: BLE001 - a valid request the model or store could not answer
        logging.getLogger("edgerec.serve.console").exception("%s failed", part)
        return JSONResponse(status_code=503, content={"detail": f"{part}: {type(e).__name__}: {e}"[:300]})


def _ledger_row(options: ConsoleOptions, i: int) -> dict:
    rows, _ = read_ledger_rows(options.ledger)
    if not 0 <= i < len(rows):
        raise HTTPException(status_code=404, detail=f"the ledger has runs 0..{len(rows) - 1}, not {i}")
    return rows[i]


def _run_row(i: int, r: dict) -> dict:
    def metrics(m) -> dict:
        return {k: v for k, v in (m or {}).items() if isinstance(v, (int, float))}

    cfg = r.get("config") if isinstance(r.get("config"), dict) else {}
    wall = r.get("wall_seconds")
    return {"i": i, "time": r.get("time"), "expid": r.get("expid"), "model": r.get("model"),
            "dataset": r.get("dataset"), "seed": r.get("seed"), "best_epoch": r.get("best_epoch"),
            "position_mode": _model_arg(r.get("model"), cfg.get("model_args"), "position_mode"),
            "valid": metrics(r.get("valid")), "test": metrics(r.get("test")),
            "wall_seconds": round(wall, 1) if isinstance(wall, (int, float)) else None,
            "git": r.get("git"), "run_dir": r.get("run_dir"),
            "plots": len(_plots(r.get("run_dir")))}


def _model_arg(model: str | None, args, name: str):
    """A model argument as the run used it: from its config, else the model constructor's default."""
    import inspect

    from edgerec.models.base import MODELS

    if isinstance(args, dict) and name in args:
        return args[name] if isinstance(args[name], (str, int, float, type(None))) else str(args[name])
    param = inspect.signature(MODELS[model].__init__).parameters.get(name) if model in MODELS else None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _user(service, raw) -> int:
    return service.internal_id(raw, "user")


def _users_offered(service) -> list:
    """The run's users with the most training samples first (the people a demo has most to say about)."""
    samples = service.ranker.samples
    train = samples.splits.get("train")
    ids = np.asarray(samples.user_ids)
    if train is not None and len(train):
        counts = np.bincount(np.asarray(train.user), minlength=len(ids) + 2)[1:len(ids) + 1]  # index i -> ids[i-1]
        ids = ids[np.argsort(-counts, kind="stable")]
    ids = ids[:USERS_LISTED]
    if service.ids is not None:
        return service.ids["user"].decode(ids)
    return [int(u) for u in ids]


def _meta(service, edge, options: ConsoleOptions) -> dict:
    r = service.ranker
    tz = r.definition.tz or "UTC"
    clock = local_clock(tz)
    last = service.index.last_ts or 0
    local_last = int(clock.local(np.asarray([last]))[0])
    offset = local_last - last  # seconds east of UTC at the log's end (page labels only)
    week_start = (local_last // SECONDS_PER_DAY + 1) * SECONDS_PER_DAY - offset  # first local midnight after it
    model = r.model
    return {"model": type(model).__name__, "two_stage": r.two_stage,
            "point_process": explain.has_point_process(model),
            "examination": getattr(model, "examination", None) is not None,
            "channels": service.index.channels, "users": _users_offered(service), "tz": tz,
            "utc_offset_s": offset, "log_end_ts": last, "week_start_ts": week_start,
            "why_now_hours": explain.WHY_NOW_HOURS,
            "edge": None if edge is None else {"path": options.edge_pack,
                                               "bytes": Path(options.edge_pack).stat().st_size,
                                               "categories": list(edge.tasks["item_category"])},
            "ledger": options.ledger, "feedback_to": _sink_name(service)}


def _sink_name(service) -> str:
    sink = service.sink
    if sink is None:
        return "applied in-process to the store"
    return f"event file {sink.path} (the stream folds it)" if hasattr(sink, "path") else f"Kafka {type(sink).__name__}"


def _history(service, uid: int, cat: dict, before_ts: int | None = None) -> tuple[object, list[dict]]:
    """The user's store state and his newest clicks (only those before `before_ts` when given: what a
    request at that time may know), newest first."""
    from edgerec.features.definition import causal_end

    state = service.store.user(uid)
    n = len(state.recent_item) if before_ts is None else causal_end(state.recent_ts, before_ts)
    keep = range(max(0, n - HISTORY_SHOWN), n)
    items = [int(state.recent_item[j]) for j in keep]
    shown = service.external_items(np.asarray(items, dtype=np.int64)) if items else []
    rows = [{"item_id": shown[a], "title": service._title.get(items[a], ""), "category": cat.get(items[a], "unknown"),
             "ts": int(state.recent_ts[j]), "position": int(state.recent_position[j] or 0)}
            for a, j in enumerate(keep)]
    return state, rows[::-1]  # newest first


def _feed(service, req: FeedRequest, cat: dict) -> dict:
    reply = service.recommend(req.user_id, req.ts, req.channel, req.n_candidates, req.k)  # what /recommend answers
    uid = _user(service, req.user_id)
    ranker = service.ranker
    state, hist_rows = _history(service, uid, cat, before_ts=req.ts)
    feats = ranker.definition.user_features(state, req.ts)
    cand, pre = service.stage1(req.ts, req.channel, req.n_candidates)
    stage1_rank = {int(c): r for r, c in enumerate(cand.tolist(), 1)}
    by_channel: dict[str, list] = {}
    shown1 = service.external_items(cand)
    for j, c in enumerate(cand.tolist()):
        by_channel.setdefault(cat.get(int(c), "unknown"), []).append(
            {"item_id": shown1[j], "title": service._title.get(int(c), ""), "prerank_score": float(pre[j])})
    channels = [{"channel": ch, "count": len(v), "top": v[:5]}
                for ch, v in sorted(by_channel.items(), key=lambda kv: -len(kv[1]))]
    served = np.asarray([service.internal_id(it["item_id"], "item") for it in reply["items"]], dtype=np.int64)
    items = [dict(it, category=cat.get(int(i), "unknown"), stage1_rank=stage1_rank.get(int(i)))
             for it, i in zip(reply["items"], served)]
    out = {"reply": reply, "stage1": {"n": int(len(cand)), "channels": channels}, "history": hist_rows,
           "clicks": int(state.clicks),
           "examination": None, "why_now": None}
    if not reply["cold_start"] and len(served):
        req_t = ranker.encode_request(uid, req.ts, feats)
        hist_cat = [cat.get(int(i), "unknown") for i in feats["hist_item"][-ranker.L:]]
        parts = explain.score_parts(ranker, req_t, served, hist_cat, [it["category"] for it in items])
        for it, p in zip(items, parts):
            it["parts"] = p
        wn = explain.why_now(ranker, uid, req.ts, feats, served)
        for it, curve in zip(items, wn.pop("curves")):
            it["why_now"] = curve
        out["why_now"] = wn
        out["examination"] = explain.examination(ranker, req_t)
    out["items"] = items
    return JSONResponse(out)


def _device(service, edge, options: ConsoleOptions, req: DeviceRequest) -> dict:
    from edgerec.serve.edge.device import Device

    reply = service.recommend(req.user_id, req.ts, req.channel, req.n_candidates, req.k)  # the cloud's list
    uid = _user(service, req.user_id)
    dev = Device(user_id=uid, model=edge)
    dev.record_clicks(service.store.user(uid), service._title, before_ts=req.ts)  # what the phone holds now
    edge_order = dev.rerank(reply["items"], now=req.ts, query=req.query or None)
    upload = dev.upload()
    upload["user_id"] = reply["user_id"]  # the id the client knows
    return JSONResponse({"query": req.query, "cloud": reply["items"], "edge": edge_order, "upload": upload,
                         "model_bytes": Path(options.edge_pack).stat().st_size,
                         "window_s": dev.window_s, "weights": {"intent": dev.w_intent, "recent": dev.w_recent}})
