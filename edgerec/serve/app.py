"""HTTP front of the two-stage service (FastAPI): `edgerec serve` runs it with uvicorn.

  POST /recommend   {user_id, ts?, channel?, n_candidates?, k?} -> ranked items with scores and timings
  POST /feedback    {events: [...]} -> accepted count; the events go to the stream (Kafka or event file)
  GET  /health      model, store, channels
  GET  /openapi.json  the published schema (also written to docs/openapi.json by `edgerec serve --openapi`)

Invalid requests get 422 with FastAPI's field list (`loc`, `msg`) plus our own message for what
pydantic cannot know (an unknown channel). Endpoints are `async` on purpose: one event-loop thread
serves requests in order, so the model and the store need no locks and the two cores stay free
for the torch kernels and the stream processor.
"""

from __future__ import annotations

import os
from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from edgerec.errors import EdgerecError
from edgerec.features.definition import Event
from edgerec.features.store import LateEventError


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int = Field(..., ge=0, description="raw user id. Cold start: a user the model never saw and with "
                         "no online history gets stage 1's order (popularity in this hour of the week x online "
                         "CTR, cold_start = true); one with online history is ranked by the model without a "
                         "user vector")
    ts: int | None = Field(None, ge=0, description="request time, unix seconds (default: now)")
    channel: str = Field("all", description="'all' or one item category, e.g. 'coffee'")
    n_candidates: int = Field(200, ge=1, le=5000, description="stage-1 candidates passed to stage 2")
    k: int = Field(20, ge=1, le=500, description="items returned")

class RankedItem(BaseModel):
    item_id: int
    score: float = Field(description="stage-2 relevance (the model's served score, no position); for a cold-start "
                                     "reply, the stage-1 score")
    prerank_score: float = Field(description="stage-1 time-slot share x online CTR")
    title: str

class RecommendResponse(BaseModel):
    user_id: int
    ts: int
    channel: str
    n_candidates: int
    history_length: int
    cold_start: bool = Field(description="true: unknown user without history, ranked by stage 1 alone")
    items: list[RankedItem]
    timing_ms: dict[str, float]

class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(..., min_length=1, description="unique; a resent event is applied once")
    user_id: int = Field(..., ge=0)
    item_id: int = Field(..., ge=0)
    ts: int = Field(..., ge=0, description="unix seconds")
    kind: Literal["exposure", "click"]
    position: int | None = Field(None, ge=1, description="1-based display position")
    request_id: int | None = None

class Feedback(BaseModel):
    events: list[FeedbackEvent] = Field(..., min_length=1, max_length=10_000)


def create_app(service):
    app = FastAPI(title="edgerec", version="0.1.0",
                  description="Two-stage recommendation for local-services feeds: stage 1 retrieves and "
                              "pre-ranks by time slot and online CTR, stage 2 ranks with the trained model "
                              "over online features. Feedback events feed the stream processor.")

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(req: RecommendRequest):
        try:  # built by us, so no second validation pass over it: straight to JSON (the schema is still published)
            return JSONResponse(service.recommend(req.user_id, req.ts, req.channel, req.n_candidates, req.k))
        except EdgerecError as e:
            raise HTTPException(status_code=422, detail=[{"loc": ["body", "channel"], "msg": str(e),
                                                          "type": "value_error"}]) from None

    @app.post("/feedback")
    async def feedback(body: Feedback) -> dict:
        events = [Event(**e.model_dump()) for e in body.events]
        try:
            return {"accepted": service.feedback(events)}
        except LateEventError as e:  # in-process store: an event too old for its duplicate check
            raise HTTPException(status_code=422, detail=[{"loc": ["body", "events", "ts"], "msg": str(e),
                                                          "type": "value_error"}]) from None

    @app.get("/health")
    async def health() -> dict:
        r = service.ranker
        return {"status": "ok", "pid": os.getpid(), "model": type(r.model).__name__, "two_stage": r.two_stage,
                "store": type(service.store).__name__, "channels": service.index.channels,
                "items": int(len(service.index.item_ids))}

    return app
