"""ONE feature definition for training, batch, streaming and serving (issue 5).

Online features are a fold over the event log: `apply(state, event)` is the only code that turns
events into features. The batch job folds a day's log with it, the stream processor applies each
event as it arrives, serving reads the folded state, so the three cannot drift apart (a test
checks the served history equals the training history of the sample builders, event by event).

Per user (`UserState`):
  * recent clicks: the last `max_len` (item_id, ts, position), oldest first, as the models read them
  * clicks per hour of the week (168 counts, UTC), the user's own time cycle
  * clicks per display position (the examination habit COUPA's personalization module reads),
    exposures and clicks in total
Per item (`ItemState`): exposures and clicks (CTR with a prior at read time).

Events are applied in per-user time order (a Kafka topic keyed by user keeps it); a click whose
timestamp is older than the user's newest one is inserted in time order, never dropped.
Idempotency is not this module's job: stores apply an event at most once by its `event_id`.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field

import numpy as np

from edgerec.errors import DataFormatError
from edgerec.features.time import SECONDS_PER_DAY, SECONDS_PER_HOUR

EVENT_KINDS = ("exposure", "click")
HOURS_PER_WEEK = 168
_FIRST_MONDAY = 4 * SECONDS_PER_DAY  # 1970-01-01 was a Thursday; 1970-01-05 00:00 UTC a Monday


@dataclass(frozen=True)
class Event:
    """One feed event on the wire (stream, feedback endpoint, batch log)."""

    event_id: str
    user_id: int
    item_id: int
    ts: int  # unix seconds
    kind: str  # exposure | click
    position: int | None = None  # 1-based display position, when known
    request_id: int | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str = "event") -> "Event":
        """Validate a decoded message; errors name the field and the fix."""
        missing = [k for k in ("event_id", "user_id", "item_id", "ts", "kind") if d.get(k) is None]
        if missing:
            raise DataFormatError(f"{where}: missing field(s) {missing}; an event needs event_id, user_id, "
                                  "item_id, ts (unix seconds) and kind (exposure|click).")
        if d["kind"] not in EVENT_KINDS:
            raise DataFormatError(f"{where}: kind {d['kind']!r} is not one of {EVENT_KINDS}.")
        try:
            ev = cls(event_id=str(d["event_id"]), user_id=int(d["user_id"]), item_id=int(d["item_id"]),
                     ts=int(d["ts"]), kind=str(d["kind"]),
                     position=None if d.get("position") is None else int(d["position"]),
                     request_id=None if d.get("request_id") is None else int(d["request_id"]))
        except (TypeError, ValueError) as e:
            raise DataFormatError(f"{where}: {e}; user_id, item_id, ts, position and request_id must be "
                                  "integers.") from None
        if ev.position is not None and ev.position < 1:
            raise DataFormatError(f"{where}: position {ev.position} must be >= 1 (1 = top of the feed).")
        return ev

    def to_dict(self) -> dict:
        return asdict(self)


def causal_end(sorted_ts: list[int], now: int) -> int:
    """THE causal cut: how many behaviours of a time-sorted history a request at `now` may see.

    A behaviour is visible only if its time is STRICTLY before the request's (a click in the same
    second, the same request or the same basket is not history yet). Serving reads it through
    `FeatureDefinition.user_features`; the sample builders through `causal_ends`, its vectorized
    twin. tests/test_samples.py checks that the DiCycle protocol's test histories equal what
    `user_features` serves at that time; tests/test_serve.py does the same for the impression
    protocol. (The cut applies to the history lists; the per-user counters beside them are
    totals over everything folded in, which no model reads.)"""
    return bisect.bisect_left(sorted_ts, now)


_USER_STRIDE = np.int64(1) << 36  # > any unix-second timestamp until year 4147


def time_key(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(user, ts) -> one sortable int64 key: user-major, then time (ts must be >= 0)."""
    return np.asarray(user, dtype=np.int64) * _USER_STRIDE + np.asarray(ts, dtype=np.int64)


def causal_ends(store_key: np.ndarray, query_key: np.ndarray) -> np.ndarray:
    """`causal_end` for many queries at once over one sorted behaviour store.

    store_key (S,) sorted `time_key`s of the stored behaviours, query_key (Q,) the same
    key of each request -> (Q,) one past the last behaviour of that user strictly before it."""
    return np.searchsorted(store_key, query_key, side="left")


def hour_of_week(ts: int) -> int:
    """Hour of the week, Monday 00:00 UTC = 0 (the same calendar as edgerec.features.time.time_slots)."""
    return int((ts - _FIRST_MONDAY) % (7 * SECONDS_PER_DAY) // SECONDS_PER_HOUR)


class _Stored:
    """States go to the stores as plain dicts (JSON in SQLite) and come back."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**d)


@dataclass
class UserState(_Stored):
    recent_item: list[int] = field(default_factory=list)  # oldest first
    recent_ts: list[int] = field(default_factory=list)
    recent_position: list[int] = field(default_factory=list)  # 0 = unknown
    slot_clicks: list[int] = field(default_factory=lambda: [0] * HOURS_PER_WEEK)
    position_clicks: list[int] = field(default_factory=list)  # index p - 1
    exposures: int = 0
    clicks: int = 0


@dataclass
class ItemState(_Stored):
    exposures: int = 0
    clicks: int = 0


@dataclass(frozen=True)
class FeatureDefinition:
    max_len: int = 50  # recent clicks kept per user (the models' L)
    n_positions: int = 20  # positions above are counted in the last bucket
    ctr_prior_clicks: float = 1.0  # item CTR = (clicks + a) / (exposures + b), read time only
    ctr_prior_exposures: float = 20.0

    def apply_user(self, s: UserState, e: Event) -> UserState:
        """Fold one event into the user's state (in place, returned for chaining)."""
        if e.kind == "exposure":
            s.exposures += 1
            return s
        s.clicks += 1
        s.slot_clicks[hour_of_week(e.ts)] += 1
        if e.position is not None:
            p = min(e.position, self.n_positions)
            if len(s.position_clicks) < self.n_positions:
                s.position_clicks.extend([0] * (self.n_positions - len(s.position_clicks)))
            s.position_clicks[p - 1] += 1
        i = bisect.bisect_right(s.recent_ts, e.ts)  # time order; equal times keep arrival order
        s.recent_ts.insert(i, e.ts)
        s.recent_item.insert(i, e.item_id)
        s.recent_position.insert(i, e.position or 0)
        if len(s.recent_ts) > self.max_len:
            del s.recent_ts[0], s.recent_item[0], s.recent_position[0]
        return s

    def apply_item(self, s: ItemState, e: Event) -> ItemState:
        if e.kind == "exposure":
            s.exposures += 1
        else:
            s.clicks += 1
        return s

    def user_features(self, s: UserState, now: int) -> dict:
        """What a model reads for a request at `now`: only behaviour strictly before it."""
        k = causal_end(s.recent_ts, now)
        total = max(sum(s.position_clicks), 1)
        return {"hist_item": s.recent_item[:k], "hist_ts": s.recent_ts[:k], "hist_position": s.recent_position[:k],
                "slot_clicks": list(s.slot_clicks), "position_click_share": [c / total for c in s.position_clicks],
                "exposures": s.exposures, "clicks": s.clicks}

    def item_ctr(self, s: ItemState) -> float:
        a, b = self.ctr_prior_clicks, self.ctr_prior_exposures
        return (s.clicks + a) / (s.exposures + b)
