"""The O2O simulator is seeded, returns aligned ground truth, and plants the effects it claims."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.data.simulator import DEFAULT_CATEGORIES, cycle_demand, preset, simulate
from edgerec.features.time import time_slots


def test_same_seed_same_data_and_different_seed_differs(tiny_sim):
    again = simulate(preset("tiny", seed=3))
    assert again.dataset.events.equals(tiny_sim.dataset.events)
    assert again.exposure_truth.equals(tiny_sim.exposure_truth)
    other = simulate(preset("tiny", seed=4))
    assert not other.dataset.events.equals(tiny_sim.dataset.events)


def test_truth_is_aligned_and_well_formed(tiny_sim):
    e, t = tiny_sim.dataset.events, tiny_sim.exposure_truth
    assert e.num_rows == t.num_rows > 10_000
    rel = t.column("true_relevance").to_numpy()
    exam = t.column("true_examination").to_numpy()
    assert ((rel > 0) & (rel < 1)).all() and ((exam > 0) & (exam <= 1)).all()
    curves = tiny_sim.examination_curves()
    assert curves.shape == (tiny_sim.config.n_users, tiny_sim.config.feed_size)
    assert np.all(np.diff(curves, axis=1) < 0) and np.allclose(curves[:, 0], 1.0)
    # the truth per exposure is the user's curve at the shown position
    u = e.column("user_id").to_numpy()
    p = e.column("position").to_numpy()
    np.testing.assert_allclose(exam, curves[u, p - 1], rtol=1e-6)


def test_clicks_follow_relevance_times_examination():
    sim = simulate(preset("small", seed=1, n_users=1000, n_days=14))
    label = sim.dataset.events.column("label").to_numpy()
    expected = (sim.exposure_truth.column("true_relevance").to_numpy()
                * sim.exposure_truth.column("true_examination").to_numpy())
    # law of large numbers over ~200k exposures: the click rate equals the mean click probability
    assert abs(label.mean() - expected.mean()) < 3 * np.sqrt(expected.mean() / len(label)) + 1e-3
    # and it holds within deciles of predicted probability (calibration of the generative story)
    bins = np.quantile(expected, np.linspace(0, 1, 11))
    idx = np.clip(np.searchsorted(bins, expected, side="right") - 1, 0, 9)
    for b in range(10):
        m = idx == b
        assert abs(label[m].mean() - expected[m].mean()) < 0.02


def test_segments_have_different_examination(tiny_sim):
    rho = tiny_sim.user_truth.column("rho").to_numpy()
    seg = np.array(tiny_sim.user_truth.column("segment").to_pylist())
    assert rho[seg == "deep"].mean() > rho[seg == "medium"].mean() > rho[seg == "shallow"].mean()


def test_daily_cycle_peaks_at_planted_hour():
    sim = simulate(preset("small", seed=2, n_users=1500, n_days=14))
    e, t = sim.dataset.events, sim.exposure_truth
    names = [c.name for c in DEFAULT_CATEGORIES]
    cat = e.column("category_id").to_numpy()
    hour = time_slots(e.column("ts").to_numpy())["hour"]
    demand = t.column("true_demand").to_numpy()
    label = e.column("label").to_numpy()
    for name, peak in (("breakfast", 7), ("bubble tea", 15)):
        m = cat == names.index(name)
        by_hour = np.array([demand[m & (hour == h)].mean() if (m & (hour == h)).any() else 0 for h in range(24)])
        assert abs(int(np.argmax(by_hour)) - peak) <= 1
    # the planted cycle shows in real clicks too: breakfast CTR at 6-8h beats 14-16h
    m = cat == names.index("breakfast")
    assert label[m & (hour >= 6) & (hour <= 8)].mean() > 1.5 * label[m & (hour >= 14) & (hour <= 16)].mean()


def test_relative_cycle_demand_peaks_every_period():
    taxi = next(c for c in DEFAULT_CATEGORIES if c.name == "taxi")
    gaps = np.arange(0, 96, 0.5)
    d = cycle_demand(taxi, np.zeros_like(gaps), np.zeros_like(gaps), gaps)
    peaks = gaps[1:-1][(d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:])]
    np.testing.assert_allclose(peaks, [24, 48, 72])
    assert cycle_demand(taxi, np.zeros(1), np.zeros(1), np.array([np.nan]))[0] == 0.0  # never clicked


def test_randomized_requests_reveal_position_bias():
    sim = simulate(preset("small", seed=5, n_users=1500, n_days=14, random_position_frac=1.0))
    e = sim.dataset.events
    label, pos = e.column("label").to_numpy(), e.column("position").to_numpy()
    ctr = np.array([label[pos == p].mean() for p in range(1, sim.config.feed_size + 1)])
    assert np.all(np.diff(ctr) < 0)  # random order: CTR falls only because of examination


def test_bad_config():
    with pytest.raises(ValueError, match="candidates_per_request must be >= feed_size"):
        simulate(preset("tiny", candidates_per_request=2))
    with pytest.raises(ValueError, match="unknown o2o-sim size"):
        preset("gigantic")
