"""Model contracts: output dict, padding invariance, the optimized attention equals the textbook one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgerec.data.samples import build_dicycle, build_impressions
from edgerec.models import COUPA, DIN, DNN, LR, MODELS, DiCycle, GRU4Rec, SASRec, TiSASRec, TimeLSTM
from edgerec.models.layers import Dice, TargetAttention
from edgerec.models.layers.sequence import PackedHistory


# ml-100k has no display positions: models with a position part run without it here (tests/test_coupa.py has the rest)
NO_POSITION_ARGS = {"COUPA": {"position_mode": "none"}}


@pytest.fixture(scope="module")
def samples(ml100k):
    return build_dicycle(ml100k, max_len=30, item_features=["genre"], user_features=["gender", "age_bucket"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_returns_logit_and_probability(samples, name):
    torch.manual_seed(0)
    model = MODELS[name](samples.spec, **NO_POSITION_ARGS.get(name, {}))
    batch = samples.make_batch(samples.splits["train"], np.arange(64))
    out = model(batch)
    assert out["logit"].shape == (64,) and out["y_pred"].shape == (64,)
    assert torch.allclose(out["y_pred"], torch.sigmoid(out["logit"]))
    loss = model.loss(batch, out)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.ndim > 1)


@pytest.fixture(scope="module")
def impressions(tiny_sim):
    """Samples with display positions, for COUPA's position modes."""
    return build_impressions(tiny_sim.dataset, max_len=30, item_features=["category_id"], user_features=["device"])


@pytest.mark.parametrize("cls,kwargs,data", [
    *[(cls, {}, "samples") for cls in [LR, DNN, DIN, DiCycle, GRU4Rec, SASRec, TiSASRec, TimeLSTM]],
    (COUPA, {"position_mode": "none"}, "samples"),
    (COUPA, {"position_mode": "personalized"}, "impressions"),
    (COUPA, {"position_mode": "none", "pp_excitation": "sum"}, "samples"),  # sums, so padding would add up
], ids=lambda v: v.__name__ if isinstance(v, type) else ("-".join(map(str, v.values())) or "default") if isinstance(v, dict) else v)
def test_extra_padding_does_not_change_scores(request, cls, kwargs, data):
    """The same history padded to L=30 or L=500 gives the same score (padding is fully masked)."""
    samples = request.getfixturevalue(data)
    torch.manual_seed(0)
    model = cls(samples.spec, **kwargs).eval()
    sp = samples.splits["test"]
    short = np.flatnonzero(sp.hist_end - sp.hist_start < 25)[:32]
    with torch.no_grad():
        a = model(samples.make_batch(sp, short, max_len=30))["logit"]
        b = model(samples.make_batch(sp, short, max_len=500))["logit"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if getattr(model, "examination", None) is not None:  # COUPA's training-time θ_u(p) reads the click history
        model.train()
        with torch.no_grad():
            a = model(samples.make_batch(sp, short, max_len=30))["log_click"]
            b = model(samples.make_batch(sp, short, max_len=500))["log_click"]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packed_target_attention_equals_textbook_din():
    torch.manual_seed(0)
    att = TargetAttention(8, (12, 6), activation="prelu")
    q, k = torch.randn(5, 8), torch.randn(5, 7, 8)
    mask = torch.rand(5, 7) > 0.4
    mask[0] = False  # a user with no history
    q.requires_grad_(True)
    k.requires_grad_(True)
    pooled, weights = att(q, k, mask)
    grads = torch.autograd.grad(pooled.square().sum(), [q, k, att.unit.net[0].weight])
    # textbook DIN: MLP on the concat for every (row, step), then zero the padding
    qq = q.unsqueeze(1).expand_as(k)
    ref_score = att.unit(torch.cat([k, qq, k - qq, k * qq], -1)).squeeze(-1) * mask
    ref_pooled = torch.einsum("bl,bld->bd", ref_score, k)
    ref_grads = torch.autograd.grad(ref_pooled.square().sum(), [q, k, att.unit.net[0].weight])
    torch.testing.assert_close(weights, ref_score)
    torch.testing.assert_close(pooled, ref_pooled)
    for g, ref in zip(grads, ref_grads):  # the rewrite trains the same weights the same way
        torch.testing.assert_close(g, ref)
    assert torch.all(pooled[0] == 0)


def test_dice_matches_its_definition():
    torch.manual_seed(0)
    dice = Dice(4)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    x = torch.randn(50, 4)
    p = torch.sigmoid(dice.bn(x))
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)


def test_tisasrec_relative_terms_equal_the_naive_formula():
    """Gather/scatter relative attention == building R_K[r_ij], R_V[r_ij] explicitly."""
    from edgerec.models.tisasrec import interval_buckets

    torch.manual_seed(0)
    B, L, d, K = 2, 5, 4, 6
    ts = torch.tensor([[0, 0, 100, 250, 400], [0, 10, 20, 50, 90]])
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    r = interval_buckets(ts, mask, K - 1)
    assert r[0, 2, 3] == 1 and r[0, 2, 4] == 2  # row 0: smallest valid gap 150 -> 100/150 and 300/150
    assert r[1, 0, 4] == 5  # 90 / 10 = 9, clipped at K - 1 = 5
    q, w = torch.randn(B, 1, L, d), torch.softmax(torch.randn(B, 1, L, L), -1)
    RK, RV = torch.randn(K, d), torch.randn(K, d)
    fast_bias = (q @ RK.T).gather(-1, r.unsqueeze(1))
    fast_val = w.new_zeros(B, 1, L, K).scatter_add(-1, r.unsqueeze(1), w) @ RV
    naive_bias = torch.einsum("bhid,bijd->bhij", q, RK[r])
    naive_val = torch.einsum("bhij,bijd->bhid", w, RV[r])
    torch.testing.assert_close(fast_bias, naive_bias)
    torch.testing.assert_close(fast_val, naive_val)


def test_bucketed_rows_change_nothing_but_the_matmul_shapes():
    """Under bf16 autocast the per-behaviour MLPs run on a row count padded to a multiple of 1024 (oneDNN
    keeps kernels per shape: a new N per batch grew a bf16 run's memory ~25 MB per batch); the real rows'
    values and every gradient equal the unpadded computation's, and fp32 is not padded at all."""
    from edgerec.models.layers.sequence import ROW_BUCKET, bucket_rows, per_row

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Sigmoid(), torch.nn.Linear(16, 1))
    x = torch.randn(1500, 8, requires_grad=True)
    assert bucket_rows(x) is x  # fp32: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bucket_rows(x).shape == (2 * ROW_BUCKET, 8) and bucket_rows(x[:1024]).shape == (1024, 8)
        padded = per_row(mlp, x)
        plain = mlp(x)
    assert padded.shape == plain.shape == (1500, 1)
    grads = torch.autograd.grad(padded.float().square().sum(), [x, *mlp.parameters()])
    ref = torch.autograd.grad(plain.float().square().sum(), [x, *mlp.parameters()])
    torch.testing.assert_close(padded.float(), plain.float(), rtol=2e-2, atol=2e-2)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("activation", ["sigmoid", "dice"])
def test_the_attention_unit_buckets_rows_only_where_no_batch_norm_sees_them(activation):
    """A Dice unit's BatchNorm takes batch statistics over the rows it is given: under bf16 it must see
    exactly the N real behaviours (padding rows would shift its statistics and running estimates)."""
    from edgerec.models.layers.sequence import ROW_BUCKET

    torch.manual_seed(0)
    att = TargetAttention(8, (12, 6), activation=activation).train()
    seen = []
    hook = att.unit.net[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    mask = torch.rand(40, 30) < 0.8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled, weights = att(torch.randn(40, 8), torch.randn(40, 30, 8), mask)
    hook.remove()
    n = int(mask.sum())
    assert seen == [ROW_BUCKET if activation == "sigmoid" else n] and weights.shape == (40, 30)


@pytest.mark.parametrize("kwargs,history", [
    ({}, "longest"), ({"attention_activation": "dice", "attention_softmax": True}, "longest"),
    ({"use_product": False, "attention_units": (16,)}, "longest"), ({}, "empty")])
def test_din_serving_path_equals_the_forward_over_tiled_candidates(impressions, kwargs, history):
    """DIN's serve_user + candidate_logits (one history against C candidates, one matrix product)
    give the forward's logits over the request repeated C times, within 1e-5; with user features,
    softmax attention, Dice units, and an empty history (N = 0)."""
    torch.manual_seed(0)
    model = DIN(impressions.spec, embedding_dim=8, **kwargs).eval()
    with torch.no_grad():  # non-trivial Dice statistics, as after training
        for m in model.modules():
            if isinstance(m, Dice):
                m.bn.running_mean.normal_(0, 0.5), m.bn.running_var.uniform_(0.5, 2.0), m.alpha.uniform_(-0.5, 0.5)
    assert _serving_path_gap(model, impressions, history) <= 1e-5


@pytest.mark.parametrize("kwargs,history", [
    ({}, "longest"), ({"mask_filtered": True, "gate_threshold": 0.2, "feed_target": True, "feed_target_time": True},
                      "longest"),
    ({"use_absolute_time": False, "use_time_cycle": False}, "longest"), ({"use_relative_time": False}, "longest"),
    ({"mask_filtered": True, "gate_threshold": 0.99}, "longest"), ({}, "empty"),
    ({"gate_threshold": -1, "attention_units": (), "attention_activation": "dice"}, "longest"),
    ({"mask_filtered": True}, "empty")])
def test_dicycle_serving_path_equals_the_forward_over_tiled_candidates(impressions, kwargs, history):
    """DiCycle's serve_user + candidate_logits (one history, C candidates) give the forward's logits
    over the request repeated C times, within 1e-5: with and without the gate masking keys (a gate
    that filters everything attends to nothing), each time part switched off, and N = 0."""
    torch.manual_seed(0)
    model = DiCycle(impressions.spec, embedding_dim=8, **kwargs).eval()
    assert _serving_path_gap(model, impressions, history) <= 1e-5


def _serving_path_gap(model, impressions, history: str) -> float:
    """Max |Δ logit| between serve_user + candidate_logits (one request, 200 candidates) and the
    forward over the request repeated 200 times; the test split's longest history, or none."""
    sp = impressions.splits["test"]
    row = int(np.argmax(sp.hist_end - sp.hist_start))
    one = impressions.make_batch(sp, np.array([row]))
    if history == "empty":
        one = {k: torch.zeros_like(v) if k.startswith("hist_") else v for k, v in one.items()}
    items = torch.from_numpy(np.random.default_rng(0).integers(1, impressions.spec.n_items, 200))
    feats = {n: torch.from_numpy(codes[items.numpy()]) for n, codes in impressions.item_feats.items()}
    served = model.candidate_logits(model.serve_user({k: v for k, v in one.items() if k not in ("item", "label")}),
                                    items, feats)
    tiled = {k: v.expand(200, *v.shape[1:]) for k, v in one.items()}
    tiled.update(item=items, **{f"item_{n}": c for n, c in feats.items()})
    with torch.no_grad():
        reference = model(tiled)["logit"]
    return float((served - reference).abs().max())


@pytest.mark.parametrize("units", [(), (12,), (12, 6)])
@pytest.mark.parametrize("activation", ["prelu", "dice", "sigmoid", "relu"])
@pytest.mark.parametrize("normalize", [False, True])
def test_one_history_attention_equals_the_packed_path_on_random_inputs(units, activation, normalize):
    """forward_one_history (C queries, one history, one matrix product) == forward_packed over C
    tiled rows, on inputs of unit scale (so the k ⊙ q term of the first layer matters), for every
    unit depth and activation, weights included; and an empty history pools to zeros."""
    torch.manual_seed(0)
    att = TargetAttention(6, units, activation, normalize=normalize).eval()
    with torch.no_grad():
        for m in att.modules():
            if isinstance(m, Dice):
                m.bn.running_mean.normal_(0, 0.5), m.bn.running_var.uniform_(0.5, 2.0), m.alpha.uniform_(-0.5, 0.5)
    q, keys = torch.randn(9, 6), torch.randn(7, 6)
    with torch.no_grad():
        pooled, w = att.forward_one_history(q, keys)
        packed = PackedHistory(torch.ones(9, 7, dtype=torch.bool))
        ref_pooled, ref_w = att.forward_packed(q, keys.repeat(9, 1), packed)
        torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-5)
        empty, w0 = att.forward_one_history(q, keys[:0])
    assert w0.shape == (9, 0) and torch.equal(empty, torch.zeros(9, 6))
