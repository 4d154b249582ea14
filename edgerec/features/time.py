"""Semantic time slots from unix seconds, vectorized, for numpy arrays AND torch tensors.

One definition used everywhere (simulator, sample builders, models inside forward, serving), so
an hour slot means the same thing in training and at serving. Only integer floor-division,
modulo and comparisons are used, so the same code runs on numpy and torch. Month and day of month
come from Howard Hinnant's civil-from-days algorithm (exact for the proleptic Gregorian calendar).
`time_slots` reads its input as wall-clock seconds: pass `LocalClock(tz).local(ts)` for a
dataset's local calendar (below; the bundled sets are UTC). See docs/design.md, "Time".
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400
# Number of slots per granularity; slot values are 0-based.
SLOT_SIZES = {"hour": 24, "weekday": 7, "month": 12, "dom": 31}

T = TypeVar("T")  # np.ndarray or torch.Tensor of int64 unix seconds


def time_slots(ts: T) -> dict[str, T]:
    """hour 0-23, weekday 0-6 (Monday = 0), month 0-11, day-of-month 0-30 for unix seconds `ts`."""
    if not hasattr(ts, "dtype"):
        ts = np.asarray(ts, dtype=np.int64)
    days = ts // SECONDS_PER_DAY  # floor division: correct before 1970 too
    hour = (ts - days * SECONDS_PER_DAY) // SECONDS_PER_HOUR
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    # civil_from_days (H. Hinnant): day count -> (year, month, day)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097  # day of era [0, 146096]
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365  # year of era [0, 399]
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of year, March-based [0, 365]
    mp = (5 * doy + 2) // 153  # March-based month [0, 11]
    dom = doy - (153 * mp + 2) // 5  # [0, 30]
    month = (mp + 2) % 12  # January = 0
    return {"hour": hour, "weekday": weekday, "month": month, "dom": dom}


def hour_of_week(ts: T) -> T:
    """0..167, Monday 00:00 = 0."""
    s = time_slots(ts)
    return s["weekday"] * 24 + s["hour"]


# Packed slots: one int per timestamp, so a behaviour's calendar slots are computed once per
# dataset and gathered per batch instead of redoing civil-from-days on every (B, L) step.
_SHIFTS = {"hour": 0, "weekday": 5, "month": 8, "dom": 12}
_MASKS = {"hour": 31, "weekday": 7, "month": 15, "dom": 31}


def pack_slots(ts: T) -> T:
    """hour | weekday << 5 | month << 8 | dom << 12 (17 bits)."""
    s = time_slots(ts)
    return s["hour"] + s["weekday"] * 32 + s["month"] * 256 + s["dom"] * 4096


def unpack_slots(code: T) -> dict[str, T]:
    """Inverse of pack_slots; works on numpy and torch integer arrays."""
    return {g: (code >> _SHIFTS[g]) & _MASKS[g] for g in _SHIFTS}


# --------------------------------------------------------------------------------------------
# Local time. Timestamps stay UTC instants everywhere (events, stores, the wire); the CALENDAR a
# model reads is the dataset's local clock, because O2O demand follows the local hour (lunch at
# 12:00 in Shanghai is 04:00 UTC). `LocalClock.local(ts)` shifts instants to local wall-clock
# seconds (ts + the zone's UTC offset at that instant, daylight saving included) and is applied
# where model inputs are built (sample batches, serving, the feature definition's hour of week),
# so every calendar slot above is a local one. Differences between two local times equal the UTC
# difference except across a daylight-saving change (an hour, where the clock itself jumps).

_OFFSET_RE = r"^UTC([+-])(\d{1,2})(?::?(\d{2}))?$"
_FIRST, _LAST = 0, 4_102_444_800  # 1970 .. 2100: the wire schema's range (definition.TS_MAX)


def _offset_at(zone, ts: int) -> int:
    from datetime import datetime

    return int(datetime.fromtimestamp(ts, zone).utcoffset().total_seconds())


def _zone(tz: str):
    """An IANA zone name ('Asia/Shanghai'), 'UTC', or a fixed offset ('UTC+8', 'UTC-03:30')."""
    import re
    from datetime import timedelta, timezone
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    m = re.match(_OFFSET_RE, tz)
    if m:
        sign, h, mins = m.group(1), int(m.group(2)), int(m.group(3) or 0)
        if h > 14 or mins >= 60:
            raise ValueError(f"time zone {tz!r}: an offset is at most UTC±14:00")
        return timezone((-1 if sign == "-" else 1) * timedelta(hours=h, minutes=mins))
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as 'Asia/Shanghai', "
                         "'Europe/Berlin' or 'UTC', or a fixed offset such as 'UTC+8'") from None


def same_zone(a: str, b: str) -> bool:
    """Whether two zone names are one clock: 'UTC+8' and 'UTC+08:00' are, 'UTC' and 'UTC+0' are, an
    IANA name is only itself (Asia/Shanghai is not UTC+8: a name promises its history of changes)."""
    from datetime import timedelta, timezone

    if a == b:
        return True

    def fixed(tz: str):  # the offset of a fixed zone, else None
        z = _zone(tz)
        return z.utcoffset(None) if isinstance(z, timezone) else (timedelta(0) if tz in ("UTC", "Etc/UTC") else None)

    return fixed(a) is not None and fixed(a) == fixed(b)


class LocalClock:
    """UTC unix seconds -> local wall-clock seconds in one time zone, vectorized for numpy and torch.

    The zone's offset changes are found once (a daily probe from 1970 to 2100, each change then
    bisected to the second) and looked up with searchsorted, so a batch costs one lookup, not a
    datetime call per timestamp. A zone that changes its offset twice within one day (none does in
    the tz database since 1970 to our knowledge) would keep only the net change of that day."""

    def __init__(self, tz: str = "UTC"):
        self.tz = tz
        zone = _zone(tz)
        day = np.arange(_FIRST, _LAST, SECONDS_PER_DAY, dtype=np.int64)
        off = np.array([_offset_at(zone, int(t)) for t in day], dtype=np.int64)
        starts, offsets = [np.iinfo(np.int64).min], [int(off[0])]
        for i in np.flatnonzero(off[1:] != off[:-1]):
            lo, hi = int(day[i]), int(day[i + 1])  # offset(lo) != offset(hi): bisect to the second
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _offset_at(zone, mid) == off[i] else (lo, mid)
            starts.append(hi)
            offsets.append(int(off[i + 1]))
        self.starts = np.asarray(starts, dtype=np.int64)  # (K,) first UTC second of each offset
        self.offsets = np.asarray(offsets, dtype=np.int64)  # (K,) its UTC offset in seconds
        self._starts, self._offsets = starts, offsets  # as Python ints: one event's lookup needs no numpy

    @property
    def is_utc(self) -> bool:
        return len(self.offsets) == 1 and self.offsets[0] == 0

    def offset(self, ts: T) -> T:
        """The zone's UTC offset in seconds at each instant of `ts` (numpy array or torch tensor)."""
        if not hasattr(ts, "dtype"):
            ts = np.asarray(ts, dtype=np.int64)
        if isinstance(ts, np.ndarray):
            return self.offsets[np.searchsorted(self.starts, ts, side="right") - 1]
        import torch

        starts = torch.as_tensor(self.starts, device=ts.device)
        offsets = torch.as_tensor(self.offsets, device=ts.device)
        return offsets[torch.searchsorted(starts, ts.contiguous(), right=True) - 1]

    def local(self, ts: T) -> T:
        """Local wall-clock seconds: what `time_slots` must see for a local hour and weekday.
        A Python int gives an int (the stream folds events one at a time)."""
        if self.is_utc:
            return ts
        if isinstance(ts, int):
            import bisect

            return ts + self._offsets[bisect.bisect_right(self._starts, ts) - 1]
        return ts + self.offset(ts)


_CLOCKS: dict[str, LocalClock] = {}


def local_clock(tz: str | None) -> LocalClock:
    """The (cached) clock of a zone name; None or '' = UTC."""
    tz = tz or "UTC"
    if tz not in _CLOCKS:
        _CLOCKS[tz] = LocalClock(tz)
    return _CLOCKS[tz]
