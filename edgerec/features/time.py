"""Semantic time slots from unix seconds (UTC), vectorized, for numpy arrays AND torch tensors.

One definition used everywhere (simulator, sample builders, models inside forward, serving), so
an hour slot means the same thing in training and at serving. Only integer floor-division,
modulo and comparisons are used, so the same code runs on numpy and torch. Month and day of month
come from Howard Hinnant's civil-from-days algorithm (exact for the proleptic Gregorian calendar).
All times are UTC; see docs/design.md.
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
