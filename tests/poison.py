"""Poison events (issue 20) and hypothesis strategies for the event validator, shared by the stream,
serving and bad-input tests. Each poison line is one JSON-lines message that used to stop the
stream processor for good, or was accepted although the HTTP API refuses it."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from edgerec.features.definition import INT64_MAX, TS_MAX

GOOD = {"event_id": "ok", "user_id": 1, "item_id": 2, "ts": 1_770_000_000, "kind": "click", "position": 3}


def _line(**change) -> bytes:
    return json.dumps({**GOOD, **change}).encode()


def _raw(field: str, token: bytes) -> bytes:
    """GOOD with `field` set to a raw JSON token json.dumps would not write (NaN, 5000 digits)."""
    head = json.dumps({k: v for k, v in GOOD.items() if k != field}).encode()[:-1]
    return head + b', "' + field.encode() + b'": ' + token + b"}"


# (name, raw line, what the reason must name)
POISON = [
    ("user_id 2^63", _line(user_id=2 ** 63), "user_id"),
    ("item_id 2^63", _line(item_id=2 ** 63), "item_id"),
    ("ts 2^63", _line(ts=2 ** 63), "ts"),
    ("position 2^63", _line(position=2 ** 63), "position"),
    ("request_id 2^63", _line(request_id=2 ** 63), "request_id"),
    ("4301+ digits", _raw("user_id", b"9" * 5000), "4,300 digits"),
    ("Infinity", _raw("user_id", b"Infinity"), "Infinity"),
    ("NaN", _raw("ts", b"NaN"), "NaN"),
    ("lone surrogate", _raw("event_id", b'"\\ud800"'), "event_id"),
    ("invalid UTF-8", _raw("event_id", b'"\xff\xfe"'), "not UTF-8"),
    ("bool id", _line(user_id=True), "user_id"),
    ("float id", _line(user_id=3.9), "user_id"),
    ("integral float", _line(item_id=3.0), "item_id"),
    ("string id", _line(user_id="3"), "user_id"),
    ("negative id", _line(item_id=-1), "item_id"),
    ("negative ts", _line(ts=-100), "ts"),
    ("ts in ms", _line(ts=4_000_000_000_000), "milliseconds"),
    ("position 0", _line(position=0), "position"),
    ("negative request_id", _line(request_id=-1), "request_id"),
    ("empty event_id", _line(event_id=""), "event_id"),
    ("dict event_id", _line(event_id={"a": 1}), "event_id"),
    ("long event_id", _line(event_id="x" * 300), "event_id"),
    ("unknown kind", _line(kind="buy"), "kind"),
    ("deep nesting", _raw("user_id", b"[" * 100_000), "nested too deeply"),
    ("far future", _line(ts=4_000_000_000), "later than"),  # 2096: within TS_MAX, beyond clock + skew
]

# hypothesis: JSON-ish values, mostly-valid events (so that accepted ones are common) and junk
_TEXT = st.text(max_size=12) | st.sampled_from(["", "\ud800", "a\udc80b", "é", "x" * 300, "exposure", "click"])
_INTS = (st.integers(-3, 3) | st.integers(0, INT64_MAX) | st.integers()
         | st.sampled_from([INT64_MAX, 2 ** 63, -2 ** 63, TS_MAX, TS_MAX + 1])
         | st.builds(lambda k: 10 ** k, st.integers(4300, 4400)))  # beyond Python's int <-> str limit
_LEAF = st.none() | st.booleans() | _INTS | st.floats() | _TEXT
JSONISH = st.recursive(_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(_TEXT, c, max_size=3),
                       max_leaves=6)


def _mostly(good):
    return st.one_of(good, good, good, JSONISH)


_FIELDS = {
    "event_id": _mostly(st.text(min_size=1, max_size=20)),
    "user_id": _mostly(st.integers(0, INT64_MAX) | st.integers(0, 50)),
    "item_id": _mostly(st.integers(0, INT64_MAX) | st.integers(0, 50)),
    "ts": _mostly(st.integers(0, TS_MAX) | st.integers(1_767_000_000, 1_800_000_000)),
    "kind": _mostly(st.sampled_from(["exposure", "click"])),
}
_OPTIONAL = {"position": _mostly(st.none() | st.integers(1, INT64_MAX) | st.integers(1, 30)),
             "request_id": _mostly(st.none() | st.integers(0, INT64_MAX))}
WIRE_EVENTS = st.fixed_dictionaries(_FIELDS, optional=_OPTIONAL)  # only wire keys: what /feedback takes
EVENT_DICTS = st.one_of(
    WIRE_EVENTS,
    st.builds(lambda d, extra: {**extra, **d}, WIRE_EVENTS, st.dictionaries(_TEXT, JSONISH, max_size=2)),
    st.dictionaries(st.sampled_from([*_FIELDS, *_OPTIONAL]) | _TEXT, JSONISH, max_size=7),
)


def to_line(d: dict) -> bytes:
    """A generated dict as a JSON line (json.dumps cannot write an integer of more than 4300 digits:
    then the raw poison line for one)."""
    try:
        return json.dumps(d).encode()
    except ValueError:
        return _raw("user_id", b"9" * 5000)
