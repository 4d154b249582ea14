"""Semantic time slots from unix seconds (UTC), vectorized.

One definition used everywhere (simulator, sample builders, models, serving), so that an hour
slot means the same thing in training and at serving. All times are UTC; see docs/design.md.
"""

from __future__ import annotations

import numpy as np

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400
# Number of slots per granularity; slot values are 0-based.
SLOT_SIZES = {"hour": 24, "weekday": 7, "month": 12, "dom": 31}


def time_slots(ts: np.ndarray) -> dict[str, np.ndarray]:
    """hour 0-23, weekday 0-6 (Monday = 0), month 0-11, day-of-month 0-30 for unix seconds `ts`."""
    ts = np.asarray(ts, dtype=np.int64)
    days = np.floor_divide(ts, SECONDS_PER_DAY)
    hour = np.floor_divide(ts - days * SECONDS_PER_DAY, SECONDS_PER_HOUR)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    dt_day = days.astype("datetime64[D]")
    month_start = dt_day.astype("datetime64[M]")
    month = month_start.astype(np.int64) % 12
    dom = (dt_day - month_start.astype("datetime64[D]")).astype(np.int64)
    return {
        "hour": hour.astype(np.int64),
        "weekday": weekday.astype(np.int64),
        "month": month.astype(np.int64),
        "dom": dom,
    }


def hour_of_week(ts: np.ndarray) -> np.ndarray:
    """0..167, Monday 00:00 = 0."""
    s = time_slots(ts)
    return s["weekday"] * 24 + s["hour"]
