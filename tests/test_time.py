"""Time slots: one definition, exact against the standard library, same result in numpy and torch."""

from __future__ import annotations

import datetime as dt

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerec.features.time import hour_of_week, time_slots


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-2_000_000_000, max_value=4_000_000_000))
def test_slots_match_datetime(ts):
    d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    s = time_slots(np.array([ts], dtype=np.int64))
    assert (s["hour"][0], s["weekday"][0], s["month"][0], s["dom"][0]) == (d.hour, d.weekday(), d.month - 1, d.day - 1)


def test_numpy_and_torch_agree():
    ts = np.random.default_rng(0).integers(0, 4_000_000_000, 10_000)
    a = time_slots(ts)
    b = time_slots(torch.from_numpy(ts))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k].numpy())
    assert hour_of_week(np.array([1767571200 + 3600 * 30]))[0] == 30  # Monday 2026-01-05 + 30 h
