"""ONE feature definition for training, batch, streaming and serving (issue 5).

Online features are a fold over the event log: `apply(state, event)` is the only code that turns
events into features. The batch job folds a day's log with it, the stream processor applies each
event as it arrives, serving reads the folded state, so the three cannot drift apart (a test
checks the served history equals the training history of the sample builders, event by event).

Per user (`UserState`):
  * recent clicks: the last `max_len` (item_id, ts, position), oldest first, as the models read them
    (plus the newest second's clicks, which a request in that second does not see)
  * clicks per hour of the week (168 counts, local time in the definition's `tz`), the user's own time cycle
  * clicks per display position (the examination habit COUPA's personalization module reads),
    exposures and clicks in total
Per item (`ItemState`): exposures and clicks (CTR with a prior at read time).

Events are applied in per-user time order (a Kafka topic keyed by user keeps it); a click whose
timestamp is older than the user's newest one is inserted in time order, never dropped.
Idempotency is not this module's job: stores apply an event at most once by its `event_id`.
"""

from __future__ import annotations

import bisect
import numbers
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from edgerec.errors import DataFormatError
from edgerec.features.time import SECONDS_PER_DAY, SECONDS_PER_HOUR, local_clock

EVENT_KINDS = ("exposure", "click")
HOURS_PER_WEEK = 168
_FIRST_MONDAY = 4 * SECONDS_PER_DAY  # 1970-01-01 was a Thursday; 1970-01-05 00:00 UTC a Monday

# The wire schema's bounds (docs/design.md, "Event rules"). `Event.from_dict` checks them for every
# source; the HTTP models (edgerec/serve/app.py) take their Field bounds from here.
INT64_MAX = 2 ** 63 - 1  # ids, positions and request ids are int64 in every store and table
TS_MAX = 4_102_444_800  # 2100-01-01 00:00 UTC: the latest unix second an event or a request may carry
EVENT_ID_MAX_CHARS = 256
DEFAULT_FUTURE_SKEW_S = SECONDS_PER_DAY  # live sources refuse events later than their clock + this
_INT_FIELDS = ("user_id", "item_id", "ts", "position", "request_id")
_NOT_AN_INT = ("user_id, item_id, ts, position and request_id must be integers (a JSON integer such as 3, not "
               "3.0, \"3\", true or NaN)")


class EventError(DataFormatError):
    """An event that breaks a rule of the wire schema; `field` names the offending field (None: the
    message as a whole)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class FutureEventError(EventError):
    """An event later than its source's clock plus the allowed skew."""


def cut(value, n: int = 80) -> str:
    """`repr(value)` for an error message, at most about n characters: never a huge value in full."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * n:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits>"
    if isinstance(value, str) and len(value) > n:
        value = value[:n]  # repr of the head only: a 96 MB string is not copied to be cut
    try:
        r = repr(value)
    except (ValueError, RecursionError):  # a container holding an integer beyond Python's 4300 digits
        return f"<a {type(value).__name__}>"
    return r if len(r) <= n else r[:n - 3] + "..."


def latest_accepted_ts(future_skew_s: int | None, now: float | None = None) -> int | None:
    """The newest event time a live source accepts: its wall clock (`now`, default time.time()) plus
    `future_skew_s`; None: no future bound. Wall-clock time, never the event time seen so far, so a
    replay of a historical log (whose times all lie in the past) passes unchanged."""
    if future_skew_s is None:
        return None
    return int(time.time() if now is None else now) + future_skew_s


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _int_field(d: dict, name: str, lo: int, where: str) -> int | None:
    v = d.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise EventError(f"{where}: {name} {cut(v)} is not an integer; {_NOT_AN_INT}.", name)
    v = int(v)
    hi = TS_MAX if name == "ts" else INT64_MAX
    if lo <= v <= hi:
        return v
    if name == "ts":
        as_ms = v // 1000  # a millisecond timestamp of 2001..2100 reads as seconds far beyond TS_MAX
        hint = (" It looks like milliseconds: send seconds (divide by 1000)." if 10 ** 9 <= as_ms <= TS_MAX else "")
        raise EventError(f"{where}: ts {cut(v)} is out of range: unix seconds from 0 (1970) to {TS_MAX} "
                         f"({_utc(TS_MAX)}).{hint}", name)
    what = {"position": "a 1-based display position (1 = top of the feed)"}.get(name, "a non-negative id")
    raise EventError(f"{where}: {name} {cut(v)} is out of range: {name} must be {what} from {lo} to {hi} "
                     "(int64).", name)


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
    def from_dict(cls, d: dict, where: str = "event", latest_ts: int | None = None) -> "Event":
        """THE event validator: the stream's decode (file and Kafka), `edgerec batch --events` and
        POST /feedback all build their events here, so none accepts what another refuses.

          event_id    a string of 1 to EVENT_ID_MAX_CHARS characters, valid UTF-8 (no lone surrogate)
          user_id, item_id   integers in [0, INT64_MAX]
          ts          an integer in [0, TS_MAX] (unix seconds up to 2100) and <= `latest_ts` when given
          kind        exposure | click
          position    absent/null, or an integer in [1, INT64_MAX];  request_id: null or [0, INT64_MAX]

        Integers are real integers: a bool, a float (3.0, 3.9, NaN, Infinity) or a string is refused,
        never truncated. Other keys are ignored (POST /feedback refuses them: a client's typo).
        `latest_ts`: the newest event time accepted (a live source's clock + the allowed skew,
        `latest_accepted_ts`); None: no future bound. Raises EventError naming the field, the value
        (cut to ~80 characters) and the fix."""
        if not isinstance(d, dict):
            raise EventError(f"{where}: an event must be a JSON object, got {type(d).__name__} {cut(d)}.")
        missing = [k for k in ("event_id", "user_id", "item_id", "ts", "kind") if d.get(k) is None]
        if missing:
            raise EventError(f"{where}: missing field(s) {missing}; an event needs event_id, user_id, "
                             "item_id, ts (unix seconds) and kind (exposure|click).", missing[0])
        event_id = d["event_id"]
        if not isinstance(event_id, str) or not 1 <= len(event_id) <= EVENT_ID_MAX_CHARS:
            raise EventError(f"{where}: event_id {cut(event_id)} must be a non-empty string of at most "
                             f"{EVENT_ID_MAX_CHARS} characters (the id a resent event is recognised by).", "event_id")
        try:
            event_id.encode("utf-8")
        except UnicodeEncodeError:
            raise EventError(f"{where}: event_id {cut(event_id)} is not valid Unicode (a lone surrogate such as "
                             "\\ud800); send the id as UTF-8 text.", "event_id") from None
        kind = d["kind"]
        if not isinstance(kind, str) or kind not in EVENT_KINDS:
            raise EventError(f"{where}: kind {cut(kind)} is not one of {EVENT_KINDS}.", "kind")
        v = {name: _int_field(d, name, 1 if name == "position" else 0, where) for name in _INT_FIELDS}
        if latest_ts is not None and v["ts"] > latest_ts:
            raise FutureEventError(
                f"{where}: ts {v['ts']} ({_utc(v['ts'])}) is later than this source's clock plus the allowed skew "
                f"(ts {latest_ts}, {_utc(latest_ts)}): a far-future event would move the feature store's watermark "
                "ahead and make every later event look older than the dedup window. Fix the producer's clock, or "
                "allow more skew (`--future-skew-hours H`; 0 = no bound, e.g. to replay a log that lies ahead of "
                "this machine's clock).", "ts")
        return cls(event_id, v["user_id"], v["item_id"], v["ts"], kind, v["position"], v["request_id"])

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


def hour_of_week(ts, tz: str | None = None):
    """Hour of the week in zone `tz` (None = UTC), Monday 00:00 local = 0: the calendar of
    edgerec.features.time.time_slots on the local clock. An int for an int, an array for an array."""
    if isinstance(ts, numbers.Integral):  # one event (the stream's fold): integer arithmetic, no numpy
        return (local_clock(tz).local(int(ts)) - _FIRST_MONDAY) % (7 * SECONDS_PER_DAY) // SECONDS_PER_HOUR
    local = local_clock(tz).local(np.asarray(ts, dtype=np.int64))
    return (local - _FIRST_MONDAY) % (7 * SECONDS_PER_DAY) // SECONDS_PER_HOUR


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
    tz: str = "UTC"  # the zone whose local hour of the week `slot_clicks` counts (the run's FeatureSpec.tz)

    def apply_user(self, s: UserState, e: Event) -> UserState:
        """Fold one event into the user's state (in place, returned for chaining)."""
        if e.kind == "exposure":
            s.exposures += 1
            return s
        s.clicks += 1
        s.slot_clicks[hour_of_week(e.ts, self.tz)] += 1
        if e.position is not None:
            p = min(e.position, self.n_positions)
            if len(s.position_clicks) < self.n_positions:
                s.position_clicks.extend([0] * (self.n_positions - len(s.position_clicks)))
            s.position_clicks[p - 1] += 1
        i = bisect.bisect_right(s.recent_ts, e.ts)  # time order; equal times keep arrival order
        s.recent_ts.insert(i, e.ts)
        s.recent_item.insert(i, e.item_id)
        s.recent_position.insert(i, e.position or 0)
        # keep max_len clicks strictly before the newest second, plus that second's clicks: a request in
        # the newest second may not see those (the history is strictly before it), so they must not push
        # out clicks it does see (train/serve parity with the sample builders' causal cut)
        before = bisect.bisect_left(s.recent_ts, s.recent_ts[-1])  # clicks before the newest second
        while before > self.max_len:
            del s.recent_ts[0], s.recent_item[0], s.recent_position[0]
            before -= 1
        while len(s.recent_ts) - before > self.max_len:  # and at most max_len of that second: 2 * max_len in all
            del s.recent_ts[before], s.recent_item[before], s.recent_position[before]
        return s

    def apply_item(self, s: ItemState, e: Event) -> ItemState:
        if e.kind == "exposure":
            s.exposures += 1
        else:
            s.clicks += 1
        return s

    def user_features(self, s: UserState, now: int) -> dict:
        """What a model reads for a request at `now`: only behaviour strictly before it, the last
        max_len of it (for `now` in or after the newest folded second; a request older than events
        already folded, e.g. from a clock ahead of it, may see fewer)."""
        k = causal_end(s.recent_ts, now)
        k0 = max(0, k - self.max_len)
        total = max(sum(s.position_clicks), 1)
        return {"hist_item": s.recent_item[k0:k], "hist_ts": s.recent_ts[k0:k],
                "hist_position": s.recent_position[k0:k],
                "slot_clicks": list(s.slot_clicks), "position_click_share": [c / total for c in s.position_clicks],
                "exposures": s.exposures, "clicks": s.clicks}

    def item_ctr(self, s: ItemState) -> float:
        return self.ctr(s.clicks, s.exposures)

    def ctr(self, clicks, exposures):
        """The smoothed online CTR (clicks + a) / (exposures + b): of one item (ints), or of stage 1's
        candidates at once (arrays, from `FeatureStore.item_counts`)."""
        return (clicks + self.ctr_prior_clicks) / (exposures + self.ctr_prior_exposures)
