"""Evaluation against the simulator's truth: the numbers issue 4's claims rest on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgerec.train.truth import evaluate_against_truth, relevance_auc, request_ndcg, spearman


def test_request_ndcg_is_one_for_the_true_order_and_pessimistic_for_ties():
    gains = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3])
    req = np.array([1, 1, 1, 2, 2, 2])
    assert request_ndcg(gains, gains, req, k=2) == pytest.approx(1.0)
    assert request_ndcg(-gains, gains, req, k=2) < 0.6
    flat = request_ndcg(np.zeros(6), gains, req, k=2)  # ties: the worst order
    assert flat == pytest.approx(request_ndcg(-gains, gains, req, k=2))


def test_request_ndcg_matches_a_loop():
    rng = np.random.default_rng(0)
    req = np.sort(rng.integers(0, 30, 400))
    s, g = rng.random(400), rng.random(400)
    vals = []
    for r in np.unique(req):
        m = req == r
        order = np.argsort(-s[m])
        disc = 1 / np.log2(np.arange(2, m.sum() + 2))[:5]
        dcg = (g[m][order][:5] * disc).sum()
        idcg = (np.sort(g[m])[::-1][:5] * disc).sum()
        vals.append(dcg / idcg)
    assert request_ndcg(s, g, req, k=5) == pytest.approx(np.mean(vals))


def test_relevance_auc_rewards_the_true_relevance():
    rng = np.random.default_rng(0)
    rel = rng.random(5000)
    assert relevance_auc(rel, rel) > relevance_auc(rng.random(5000), rel) + 0.2
    assert abs(relevance_auc(rng.random(5000), rel) - 0.5) < 0.03


def test_spearman():
    a = np.arange(10.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)


def test_truth_evaluation_runs_on_the_simulator(tiny_sim):
    from edgerec.data.samples import build_impressions
    from edgerec.models.coupa import COUPA

    ds = tiny_sim.dataset
    ds.extras = {"truth_exposures": tiny_sim.exposure_truth, "truth_users": tiny_sim.user_truth}
    s = build_impressions(ds, max_len=10, item_features=["category_id"], user_features=["device"])
    torch.manual_seed(0)
    out = evaluate_against_truth(COUPA(s.spec, embedding_dim=8), s, ds, k=5)
    assert 0 <= out["relevance_auc"] <= 1 and 0 < out["request_ndcg@5"] <= 1
    assert set(out["examination_spearman"]) <= {"deep", "medium", "shallow"}
    assert set(out["examination_shape"]) == set(out["examination_spearman"])


def test_examination_shape_is_zero_for_the_truth_up_to_scale():
    from edgerec.train.truth import examination_shape

    true = np.stack([0.9 ** np.arange(6), 0.5 ** np.arange(6)])
    seg = np.array(["deep", "shallow"])
    out = examination_shape(0.7 * true, seg, true)
    assert out["deep"]["mae"] == 0 and out["shallow"]["true_last"] == pytest.approx(0.5 ** 5, abs=1e-4)
