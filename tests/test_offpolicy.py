"""Off-policy value and position curves for Open Bandit (edgerec/train/offpolicy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.train.offpolicy import bootstrap_ci, ips_value, position_ctr_curve


def test_ips_is_unbiased_for_a_known_policy():
    """Simulated uniform logging over 10 items x 3 positions; the target policy's true value is known."""
    rng = np.random.default_rng(0)
    n, n_items = 100_000, 10
    ctr = np.linspace(0.01, 0.2, n_items)  # item i's click rate, position-free
    item = rng.integers(0, n_items, n)
    position = rng.integers(1, 4, n)
    click = (rng.random(n) < ctr[item]).astype(np.float64)
    pscore = np.full(n, 1 / n_items)
    best = np.tile(np.argsort(-ctr)[:3], (n, 1))  # our policy shows the 3 best items
    out = ips_value(best, item, position, click, pscore, n_boot=50)
    assert out["ips"] == pytest.approx(np.sort(ctr)[-3:].mean(), rel=0.07)
    assert out["ips_lo"] <= out["ips"] <= out["ips_hi"]
    assert out["logged"] == pytest.approx(ctr.mean(), rel=0.05)


def test_position_curve_recovers_examination():
    rng = np.random.default_rng(1)
    n = 100_000
    position = rng.integers(1, 4, n)
    theta = np.array([1.0, 0.7, 0.4])
    click = (rng.random(n) < 0.1 * theta[position - 1]).astype(np.float64)
    out = position_ctr_curve(position, click, n_boot=50)
    assert out["ratio"][0] == 1.0
    for p in (1, 2):
        assert out["ratio_lo"][p] <= theta[p] <= out["ratio_hi"][p]


def test_bootstrap_ci_brackets_the_mean():
    x = np.random.default_rng(2).normal(3.0, 1.0, 2000)
    v, lo, hi = bootstrap_ci(x, np.mean, n_boot=200)
    assert lo < v < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 / np.sqrt(2000), rel=0.2)  # the normal-theory width
