"""Metrics against scikit-learn and brute force (property tests with hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from edgerec.train.metrics import auc, evaluate, gauc, hr_at_k, logloss, ndcg_at_k, parse_metric


@st.composite
def scored(draw, min_size=2, max_size=60):
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    # few distinct scores so ties are common
    p = np.array(draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))) / 6.0
    g = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    return y, p, g


@settings(max_examples=200, deadline=None)
@given(scored())
def test_auc_matches_sklearn(data):
    y, p, _ = data
    if len(set(y)) < 2:
        assert math.isnan(auc(y, p))
    else:
        assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(scored())
def test_logloss_matches_sklearn(data):
    y, p, _ = data
    assert logloss(y, p) == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]), rel=1e-9)


def brute_gauc(y, p, g):
    num = den = 0.0
    for group in np.unique(g):
        m = g == group
        if len(set(y[m])) == 2:
            num += roc_auc_score(y[m], p[m]) * m.sum()
            den += m.sum()
    return num / den if den else float("nan")


@settings(max_examples=200, deadline=None)
@given(scored())
def test_gauc_matches_brute_force(data):
    y, p, g = data
    expected = brute_gauc(y, p, g)
    if math.isnan(expected):
        assert math.isnan(gauc(y, p, g))
    else:
        assert gauc(y, p, g) == pytest.approx(expected, abs=1e-12)


def brute_rank_metrics(y, p, g, k):
    ndcgs, hits = [], []
    for group in np.unique(g):
        m = np.flatnonzero(g == group)
        if y[m].sum() == 0:
            continue
        # pessimistic: among equal scores, negatives first
        order = sorted(m, key=lambda i: (-p[i], y[i]))
        rel = [y[i] for i in order][:k]
        dcg = sum(r / math.log2(j + 2) for j, r in enumerate(rel))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(int(y[m].sum()), k)))
        ndcgs.append(dcg / idcg)
        hits.append(float(any(rel)))
    return (np.mean(ndcgs), np.mean(hits)) if ndcgs else (float("nan"), float("nan"))


@settings(max_examples=200, deadline=None)
@given(scored(), st.integers(1, 5))
def test_ndcg_and_hr_match_brute_force(data, k):
    y, p, g = data
    ndcg, hr = brute_rank_metrics(y, p, g, k)
    if math.isnan(ndcg):
        assert math.isnan(ndcg_at_k(y, p, g, k))
        return
    assert ndcg_at_k(y, p, g, k) == pytest.approx(ndcg, abs=1e-12)
    assert hr_at_k(y, p, g, k) == pytest.approx(hr, abs=1e-12)


def test_constant_predictor_gets_no_credit():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    p = np.full(8, 0.5)
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert hr_at_k(y, p, g, 1) == 0.0  # the positive is ranked after every tied negative
    assert auc(y, p) == 0.5 and gauc(y, p, g) == 0.5


def test_hr_is_monotone_in_k():
    rng = np.random.default_rng(0)
    y, p, g = rng.integers(0, 2, 500), rng.random(500), rng.integers(0, 40, 500)
    hrs = [hr_at_k(y, p, g, k) for k in (1, 5, 10, 20)]
    assert hrs == sorted(hrs)


def test_gauc_skips_one_class_groups_and_weights_by_size():
    y = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1])
    p = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.5, 0.6, 0.7, 0.9])
    g = np.array([0, 0, 1, 1, 1, 1, 1, 2, 2])  # group 2 is all positive: skipped
    # group 0: AUC 1 (2 samples); group 1: positives 0.8,0.2 vs negatives 0.3,0.5,0.6 -> 3/6 (5 samples)
    assert gauc(y, p, g) == pytest.approx((1.0 * 2 + 0.5 * 5) / 7)


def test_subset_metrics_equal_the_metric_on_the_masked_samples():
    from edgerec.train.metrics import lower_is_better

    rng = np.random.default_rng(5)
    y, p, g = rng.integers(0, 2, 400), rng.random(400), rng.integers(0, 20, 400)
    rep = rng.random(400) < 0.3
    got = evaluate(["AUC:repeat", "GAUC:new", "logloss:repeat", "AUC"], y, p, g, {"repeat": rep, "new": ~rep})
    assert got["AUC:repeat"] == evaluate(["AUC"], y[rep], p[rep])["AUC"] != got["AUC"]
    assert got["GAUC:new"] == evaluate(["GAUC"], y[~rep], p[~rep], g[~rep])["GAUC"]
    assert got["logloss:repeat"] == evaluate(["logloss"], y[rep], p[rep])["logloss"]
    assert np.isnan(evaluate(["AUC:repeat"], y, p, g, {"repeat": np.zeros(400, bool)})["AUC:repeat"])
    with pytest.raises(ValueError, match="record no 'repeat' subset"):
        evaluate(["AUC:repeat"], y, p, g, {})
    assert lower_is_better("logloss:repeat") and lower_is_better("logloss") and not lower_is_better("GAUC:new")


def test_parse_metric_and_evaluate():
    assert parse_metric("NDCG@10") == ("NDCG", 10)
    with pytest.raises(ValueError, match="unknown metric 'MAP'"):
        parse_metric("MAP")
    with pytest.raises(ValueError, match="needs a group id"):
        evaluate(["GAUC"], np.array([0, 1]), np.array([0.1, 0.9]))
