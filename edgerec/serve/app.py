"""HTTP front of the two-stage service (FastAPI): `edgerec serve` runs it with uvicorn.

  POST /recommend   {user_id, ts?, channel?, n_candidates?, k?} -> ranked items with scores and timings
  POST /feedback    {events: [...]} -> accepted count; the events go to the stream (Kafka or event file)
  GET  /health      model, store, channels; 503 "failing" with the error while the scorer fails
  GET  /openapi.json  the published schema (also written to docs/openapi.json by `edgerec serve --openapi`)
  GET  /            the console (edgerec/serve/console: a web page and its /console/ endpoints, not in the schema)

Invalid requests get 422 with FastAPI's field list (`loc`, `msg`, `type`, and `input`: the offending
value as a repr cut to ~80 characters, so NaN, Infinity, a lone surrogate or a 96 MB string can
never make the reply itself fail) plus our own message for what pydantic cannot know (an unknown
channel). Integers are strict (no bools, floats or strings) and bounded by the event schema's
constants (edgerec/features/definition.py); every feedback event also goes through THE event
validator `Event.from_dict`, the stream's, so /feedback never accepts an event the stream would
refuse (a far-future ts included: later than the clock + the service's `future_skew_s`).
Request bodies over `max_body_bytes` (default 2 MB, `edgerec serve --max-body-mb`) get 413 with a
message (`BodyLimit`). A valid request that the scorer, the store or the feedback sink cannot answer
gets 503 with one line (never 500), and /health says so until a request succeeds (`ScorerHealth`).
Endpoints are `async` on purpose: one event-loop thread serves requests in
order, so the model and the store need no locks and the two cores stay free for the torch kernels
and the stream processor.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgerec.errors import EdgerecError, StoreUnavailable
from edgerec.features.definition import (EVENT_ID_MAX_CHARS, INT64_MAX, TS_MAX, Event, EventError, cut,
                                         latest_accepted_ts)
from edgerec.features.store import LateEventError
from edgerec.serve.service import IdError

_STRICT = ConfigDict(extra="forbid", strict=True)  # an int is an int: no true, 3.0 or "3"
# An id: an integer (the bundled datasets) or text (an imported dataset's own ids, edgerec.data.imports)
Id = Annotated[int, Field(ge=0, le=INT64_MAX)] | Annotated[str, StringConstraints(min_length=1, max_length=256)]
DEFAULT_MAX_BODY_BYTES = 2_000_000  # 10,000 feedback events (the most one request may carry) are ~1.3 MB


class RecommendRequest(BaseModel):
    model_config = _STRICT
    user_id: Id = Field(..., description="the user's id: an integer for the bundled datasets; for an "
                         "imported dataset the user's own id as text (an integer is read as its digits). Cold start: a user the model never saw and with "
                         "no online history gets stage 1's order (popularity in this hour of the week x online "
                         "CTR, cold_start = true); one with online history is ranked by the model without a "
                         "user vector")
    ts: int | None = Field(None, ge=0, le=TS_MAX, description="request time, unix seconds (default: now)")
    channel: str = Field("all", max_length=64, description="'all' or one item category, e.g. 'coffee'")
    n_candidates: int = Field(200, ge=1, le=5000, description="stage-1 candidates passed to stage 2")
    k: int = Field(20, ge=1, le=500, description="items returned")

class RankedItem(BaseModel):
    item_id: int | str = Field(description="the item's id (for an imported dataset, the user's own id text)")
    score: float = Field(description="stage-2 relevance (the model's served score, no position); for a cold-start "
                                     "reply, the stage-1 score")
    prerank_score: float = Field(description="stage-1 time-slot share x online CTR")
    title: str

class RecommendResponse(BaseModel):
    user_id: int | str
    ts: int
    channel: str
    n_candidates: int
    history_length: int
    cold_start: bool = Field(description="true: unknown user without history, ranked by stage 1 alone")
    items: list[RankedItem]
    timing_ms: dict[str, float]

class FeedbackEvent(BaseModel):
    """The wire event; the same rules as the stream's (`Event.from_dict`)."""
    model_config = _STRICT
    event_id: str = Field(..., min_length=1, max_length=EVENT_ID_MAX_CHARS,
                          description="unique; a resent event is applied once (UTF-8 text)")
    user_id: Id = Field(..., description="as in /recommend: an integer, or an imported dataset's id text")
    item_id: Id = Field(..., description="an integer, or an imported dataset's item id text")
    ts: int = Field(..., ge=0, le=TS_MAX, description="unix seconds; refused when later than the server's clock "
                    "plus its allowed skew (`edgerec serve --future-skew-hours`, default 24)")
    kind: Literal["exposure", "click"]
    position: int | None = Field(None, ge=1, le=INT64_MAX, description="1-based display position")
    request_id: int | None = Field(None, ge=0, le=INT64_MAX)

class Feedback(BaseModel):
    model_config = _STRICT
    events: list[FeedbackEvent] = Field(..., min_length=1, max_length=10_000)


def _json_safe(v):
    """A value as it may appear in a JSON reply: finite numbers, bools and None as they are, a string
    with its lone surrogates escaped, anything else as its repr cut to ~80 characters."""
    if v is None or isinstance(v, bool) or (isinstance(v, int) and v.bit_length() <= 64):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return v
    if isinstance(v, str) and len(v) <= 80:
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    return cut(v)


_UNION_TAGS = {"constrained-int", "constrained-str", "int", "str"}  # pydantic's names of the members of `Id`


def validation_error_reply(errors: list[dict]) -> JSONResponse:
    """FastAPI's 422 list (`loc`, `msg`, `type`, `input`, `ctx`), made safe to encode: the default
    reply echoes the input as it came, and NaN, Infinity or a lone surrogate in it made building
    the reply fail (HTTP 500)."""
    detail, seen = [], set()
    for e in errors:
        loc = [_json_safe(x) for x in e.get("loc", ()) if x not in _UNION_TAGS]
        if repr(loc) in seen:  # an id failed as an integer AND as text: one error, the one for its JSON type
            continue
        if any(x in _UNION_TAGS for x in e.get("loc", ())):
            tag = "constrained-str" if isinstance(e.get("input"), str) else "constrained-int"
            e = next((x for x in errors if tag in x.get("loc", ()) and
                      [y for y in x.get("loc", ()) if y not in _UNION_TAGS] == list(e.get("loc", ()))[:-1]), e)
        seen.add(repr(loc))
        d = {"loc": loc, "msg": _json_safe(str(e.get("msg", ""))),
             "type": str(e.get("type", "value_error")), "input": cut(e.get("input"))}
        if isinstance(e.get("ctx"), dict):
            d["ctx"] = {str(k): _json_safe(v if isinstance(v, (int, float, str)) else str(v))
                        for k, v in e["ctx"].items()}
        detail.append(d)
    return JSONResponse(status_code=422, content={"detail": detail})


def _exact_bounds(node) -> None:
    """FastAPI's schema model holds `minimum`/`maximum` as floats, and float(2**63 - 1) is 2**63: the
    published bound would admit one id the server refuses. Integral bounds are written as integers."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("minimum", "maximum") and isinstance(v, float) and v.is_integer():
                node[k] = INT64_MAX if v == float(INT64_MAX) else int(v)
            else:
                _exact_bounds(v)
    elif isinstance(node, list):
        for v in node:
            _exact_bounds(v)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 with a message. uvicorn has no limit of
    its own, and two 96 MB /feedback bodies were accepted (+190 MB of server memory, 633 MB of SQLite).
    A Content-Length over the limit is refused before a byte is read; a body without one (chunked) is
    counted as it arrives and refused once past the limit, never buffered whole."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.message = (f"request body larger than {max_bytes:,} bytes, this server's limit: send fewer events per "
                        "request, or start the server with a larger `edgerec serve --max-body-mb`")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and (len(length) > 15 or int(length) > self.max_bytes):
            return await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # FastAPI re-raises a middleware's HTTPException while it reads the body
                raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, counted, send)


_BODY_ERRORS = {413: {"description": "request body larger than the server's limit (`edgerec serve --max-body-mb`, "
                                   "default 2 MB)"},
              400: {"description": "the request body could not be read as JSON (not UTF-8, or not JSON at all)"}}


_UNAVAILABLE = {503: {"description": "the scorer, the store or the feedback sink failed on a valid request; "
                                     "nothing was changed. GET /health reports the error until a request succeeds"}}


class ScorerHealth:
    """What /health reports about the serving path: a valid request that the scorer (or the store, or
    the feedback sink) could not answer gets 503 with one line, is counted, and makes /health answer
    503 "failing" with the error until the next request succeeds. The traceback goes to the server's
    log, not to the client."""

    def __init__(self) -> None:
        self.failures, self.last_error = 0, None

    def failed(self, part: str, e: Exception) -> JSONResponse:
        import logging

        logging.getLogger("edgerec.serve").exception("%s failed", part)
        self.failures += 1
        self.last_error = f"{part}: {type(e).__name__}: {e}"[:300]
        return JSONResponse(status_code=503, content={"detail": f"{self.last_error}. Nothing was changed; "
                                                                "retry, and see GET /health and the server log."})

    def ok(self) -> None:
        self.last_error = None

    def report(self) -> dict:
        return {"failures": self.failures, "last_error": self.last_error}


def create_app(service, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, console=None):
    """The service's app; with a service, the console is served at `/` as well (edgerec/serve/console:
    `console` is its ConsoleOptions; its endpoints stay out of the OpenAPI schema)."""
    app = FastAPI(title="edgerec", version="0.1.0",
                  description="Two-stage recommendation for local-services feeds: stage 1 retrieves and "
                              "pre-ranks by time slot and online CTR, stage 2 ranks with the trained model "
                              "over online features. Feedback events feed the stream processor.")

    def openapi() -> dict:
        if app.openapi_schema is None:
            _exact_bounds(FastAPI.openapi(app))  # builds and caches app.openapi_schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        return validation_error_reply(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI could not parse the body at all
            return JSONResponse(status_code=400, content={"detail": "the request body is not JSON in UTF-8; send a JSON "
                                                                    "object with Content-Type: application/json"})
        return await http_exception_handler(request, exc)

    health = ScorerHealth()

    @app.post("/recommend", response_model=RecommendResponse, responses={**_BODY_ERRORS, **_UNAVAILABLE})
    async def recommend(req: RecommendRequest):
        try:  # built by us, so no second validation pass over it: straight to JSON (the schema is still published)
            reply = service.recommend(req.user_id, req.ts, req.channel, req.n_candidates, req.k)
        except StoreUnavailable as e:
            return health.failed("store", e)
        except IdError as e:
            raise HTTPException(status_code=422, detail=[{"loc": ["body", "user_id"], "msg": str(e),
                                                          "type": "value_error"}]) from None
        except EdgerecError as e:
            raise HTTPException(status_code=422, detail=[{"loc": ["body", "channel"], "msg": str(e),
                                                          "type": "value_error"}]) from None
        except Exception as e:  # noqa: BLE001 - a valid request the scorer could not answer: 503, never 500
            return health.failed("scorer", e)
        health.ok()
        return JSONResponse(reply)

    @app.post("/feedback", responses={**_BODY_ERRORS, **_UNAVAILABLE})
    async def feedback(body: Feedback) -> dict:
        latest = latest_accepted_ts(service.future_skew_s)
        events = []
        for i, e in enumerate(body.events):
            try:  # THE event validator, the stream's: what it refuses is refused here too
                events.append(Event.from_dict(service.internal_ids(e.model_dump(), f"events[{i}]"), f"events[{i}]",
                                              latest))
            except EventError as err:
                raise HTTPException(status_code=422, detail=[{"loc": ["body", "events", i, err.field or "event"],
                                                              "msg": str(err), "type": "value_error"}]) from None
        try:
            accepted = service.feedback(events)
        except LateEventError as e:  # in-process store: an event too old for its duplicate check
            raise HTTPException(status_code=422, detail=[{"loc": ["body", "events", "ts"], "msg": str(e),
                                                          "type": "value_error"}]) from None
        except Exception as e:  # noqa: BLE001 - the store, the event file or Kafka failed: 503, never 500
            return health.failed("feedback sink", e)
        health.ok()
        return {"accepted": accepted}

    @app.get("/health", responses=_UNAVAILABLE)
    async def health_check():
        r = service.ranker
        body = {"status": "ok", "pid": os.getpid(), "model": type(r.model).__name__, "two_stage": r.two_stage,
                "store": type(service.store).__name__, "channels": service.index.channels,
                "items": int(len(service.index.item_ids)), **health.report()}
        if health.last_error is not None:
            return JSONResponse(status_code=503, content={**body, "status": "failing"})
        return body

    if service is not None:
        from edgerec.serve.console import mount_console

        mount_console(app, service, console)
    return app
