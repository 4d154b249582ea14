"""COUPA: the point-process layer, the position layer, and the rule that serving never reads positions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from edgerec.data.samples import build_impressions
from edgerec.features.spec import FeatureSpec
from edgerec.models.coupa import COUPA
from edgerec.models.layers.point_process import PointProcessIntensity, cyclic_features
from edgerec.models.layers.position import ExaminationModel, click_position_profile
from edgerec.models.layers.sequence import PackedHistory


@pytest.fixture(scope="module")
def imp(tiny_sim):
    return build_impressions(tiny_sim.dataset, max_len=12, item_features=["category_id"], user_features=["device"])


@pytest.fixture(scope="module")
def batch(imp):
    return imp.make_batch(imp.splits["train"], np.arange(64))


class NoPosition(dict):
    """A batch that fails the test the moment anyone reads the true position."""

    def __getitem__(self, key):
        if key == "position":
            raise AssertionError("the served score read the true display position")
        return super().__getitem__(key)


@pytest.mark.parametrize("mode", ["personalized", "pal", "feature", "none"])
@pytest.mark.parametrize("use_pp", [True, False])
def test_served_score_never_reads_the_position(imp, batch, mode, use_pp):
    torch.manual_seed(0)
    model = COUPA(imp.spec, embedding_dim=8, position_mode=mode, use_point_process=use_pp).eval()
    with torch.no_grad():
        served = model(NoPosition(batch))["y_pred"]  # raises if forward touches batch["position"]
        shuffled = dict(batch, position=batch["position"].flip(0))
        torch.testing.assert_close(model(shuffled)["y_pred"], served, rtol=0, atol=0)
    model.train()  # in training the displayed position is used (except position_mode none)
    out = model(dict(batch))
    assert ("log_click" in out) == (mode in ("personalized", "pal"))
    loss = model.loss(batch, out)
    assert torch.isfinite(loss)
    loss.backward()


def test_pal_loss_is_bce_of_examination_times_relevance(imp, batch):
    torch.manual_seed(0)
    model = COUPA(imp.spec, embedding_dim=8, position_mode="pal").train()
    out = model(batch)
    p = torch.sigmoid(out["log_examination"]).new_tensor(0) + out["log_examination"].exp() * out["y_pred"]
    expected = torch.nn.functional.binary_cross_entropy(p, batch["label"])
    torch.testing.assert_close(model.loss(batch, out), expected, rtol=1e-5, atol=1e-6)


def test_pal_curve_is_global_and_personalized_curve_is_not(imp, batch):
    torch.manual_seed(0)
    pal = COUPA(imp.spec, embedding_dim=8, position_mode="pal")
    curves = pal.examination_curves(batch)
    assert curves.shape == (64, pal.n_positions)
    torch.testing.assert_close(curves, curves[:1].expand_as(curves))
    per = COUPA(imp.spec, embedding_dim=8, position_mode="personalized")
    c2 = per.examination_curves(batch)
    assert (c2 - c2[:1]).abs().max() > 1e-4  # users with different devices / click habits differ


def test_click_position_profile_counts_only_real_clicks():
    pos = torch.tensor([[1, 1, 3, 0], [2, 9, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    prof = click_position_profile(pos, mask, n_positions=4)
    torch.testing.assert_close(prof[0, :4], torch.tensor([2 / 3, 0, 1 / 3, 0]))
    torch.testing.assert_close(prof[1, :4], torch.tensor([0, 0.5, 0, 0.5]))  # 9 is clipped into 4
    torch.testing.assert_close(prof[:, 4], torch.log1p(torch.tensor([3.0, 2.0])))


def test_examination_model_rejects_no_inputs():
    with pytest.raises(ValueError, match="needs user features or the click history"):
        ExaminationModel(5, user_dim=0, personalized=True, use_click_history=False)


def test_position_modes_need_positions(tiny_sim):
    from edgerec.data.samples import build_dicycle

    s = build_dicycle(tiny_sim.dataset, max_len=8)
    with pytest.raises(ValueError, match="needs display positions"):
        COUPA(s.spec, position_mode="pal")
    COUPA(s.spec, position_mode="none")  # the time part alone works on any protocol


def test_cyclic_features_repeat_every_week_and_day():
    t = torch.tensor([1_700_000_000, 1_700_003_600], dtype=torch.int64)
    week = cyclic_features(t + 7 * 86400)
    torch.testing.assert_close(cyclic_features(t), week, atol=1e-5, rtol=0)
    day = cyclic_features(t + 86400)
    daily = slice(0, 4)  # harmonics of the 24 h period come first
    torch.testing.assert_close(cyclic_features(t)[:, daily], day[:, daily], atol=1e-5, rtol=0)
    assert (cyclic_features(t)[:, 4:] - day[:, 4:]).abs().max() > 0.1


def _history(B=3, L=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = torch.tensor([1_700_000_000 + 3600 * 24 * 30] * B)
    hist_ts = ts[:, None] - torch.randint(60, 3600 * 24 * 20, (B, L), generator=g)
    hist_ts = hist_ts.sort(dim=1).values  # most recent last
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :2] = False
    return ts, hist_ts, mask, torch.randn(B, L, d, generator=g), torch.randn(B, d, generator=g)


def _nonzero_self_kernel(pp: PointProcessIntensity) -> None:
    """The same-item kernel starts at zero (a no-op); tests give it weights so it counts."""
    with torch.no_grad():
        pp.self_excite.weight.normal_()
        pp.self_excite.bias.fill_(0.5)


@pytest.mark.parametrize("excitation,same_item", [("attention", False), ("sum", False), ("attention", True)])
def test_packed_and_dense_intensity_agree(excitation, same_item):
    torch.manual_seed(0)
    pp = PointProcessIntensity(8, time_dim=8, units=(16,), excitation=excitation, same_item=same_item)
    ts, hist_ts, mask, e_hist, e_t = _history()
    same_dense = None
    if same_item:
        _nonzero_self_kernel(pp)
        same_dense = torch.zeros(*mask.shape, dtype=torch.bool)
        same_dense[1, [1, 4]] = True  # row 1's target item was bought twice before
        same_dense[0, 0] = True  # a padding slot: must not count
    packed = PackedHistory(mask)
    same = packed.pack(same_dense) if same_item else None
    fast = pp(e_t, ts, packed.pack(e_hist), packed.pack(hist_ts), packed, same=same)["log_intensity"]
    dense = pp.dense_log_intensity(e_t[:, None], ts[:, None], e_hist, hist_ts, mask,
                                   same=None if same_dense is None else same_dense[:, None])[:, 0]
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-5)


def test_same_item_term_excites_only_targets_bought_before():
    """The diagonal Hawkes term: it raises λ for a target whose item is in the history (by the
    learned kernel, once per earlier purchase) and leaves every other target's λ unchanged."""
    torch.manual_seed(0)
    ts, hist_ts, mask, e_hist, e_t = _history()
    packed = PackedHistory(mask)
    pp = PointProcessIntensity(8, time_dim=8, units=(16,), same_item=True)
    with pytest.raises(ValueError, match="needs `same`"):
        pp(e_t, ts, packed.pack(e_hist), packed.pack(hist_ts), packed)
    none = torch.zeros(packed.pack(hist_ts).shape, dtype=torch.bool)
    zero_kernel = pp(e_t, ts, packed.pack(e_hist), packed.pack(hist_ts), packed, same=none)["log_intensity"]
    with torch.no_grad():
        pp.self_excite.bias.fill_(3.0)  # a strong, gap-independent self-excitation
    same_dense = torch.zeros(*mask.shape, dtype=torch.bool)
    same_dense[2, [0, 3]] = True
    same = packed.pack(same_dense)
    lam_none = pp(e_t, ts, packed.pack(e_hist), packed.pack(hist_ts), packed, same=none)["log_intensity"]
    lam = pp(e_t, ts, packed.pack(e_hist), packed.pack(hist_ts), packed, same=same)["log_intensity"]
    torch.testing.assert_close(lam_none, zero_kernel)  # bias counts only through same-item events
    torch.testing.assert_close(lam[:2], lam_none[:2])
    assert lam[2] > lam_none[2] + 1.0


def test_sum_excitation_is_additive_over_events_and_attention_is_not():
    """Hawkes sum: the excitation of a history is the sum of its events' excitations, so one matching
    past event counts in full; the attention-weighted form averages it with the others."""
    torch.manual_seed(0)
    ts, hist_ts, mask, e_hist, e_t = _history()
    keep = mask.all(0).nonzero().flatten()[-4:]  # 4 slots that are real in every row
    gaps = {}
    for excitation in ("attention", "sum"):
        pp = PointProcessIntensity(8, time_dim=8, units=(16,), excitation=excitation)
        with torch.no_grad():  # μ = 0, so λ = softplus(excitation) and the excitation can be read back
            pp.base.net[-1].weight.zero_()
            pp.base.net[-1].bias.zero_()

        def excitation_of(m):
            lam = pp.dense_log_intensity(e_t[:, None], ts[:, None] + 1, e_hist, hist_ts, m)[:, 0].exp()
            return torch.log(torch.expm1(lam.double()))  # inverse softplus

        only = torch.zeros_like(mask)
        only[:, keep] = True
        singles = []
        for j in keep:
            one = torch.zeros_like(mask)
            one[:, j] = True
            singles.append(excitation_of(one))
        gaps[excitation] = (excitation_of(only) - torch.stack(singles).sum(0)).abs().max().item()
    assert gaps["sum"] < 1e-3
    assert gaps["attention"] > 1e-2
    with pytest.raises(ValueError, match="excitation must be"):
        PointProcessIntensity(8, excitation="max")


def test_intensity_is_causal_and_depends_on_the_gaps():
    torch.manual_seed(0)
    pp = PointProcessIntensity(8, time_dim=8, units=(16,))
    ts, hist_ts, mask, e_hist, e_t = _history()
    t_q = hist_ts[:, 3:4] + 1  # just after the 4th event: events 4.. are in its future
    base = pp.dense_log_intensity(e_t[:, None], t_q, e_hist, hist_ts, mask)
    future = e_hist.clone()
    future[:, 4:] = torch.randn_like(future[:, 4:])
    torch.testing.assert_close(pp.dense_log_intensity(e_t[:, None], t_q, future, hist_ts, mask), base)
    earlier = hist_ts.clone()
    earlier[:, :3] -= 5 * 3600
    assert not torch.allclose(pp.dense_log_intensity(e_t[:, None], t_q, e_hist, earlier, mask), base)


@pytest.mark.parametrize("same_item", [False, True])
def test_log_likelihood_is_finite_and_trains(imp, same_item):
    sp = imp.splits["train"]
    long = np.flatnonzero(sp.hist_end - sp.hist_start >= 6)[:32]  # rows with events to score
    batch = imp.make_batch(sp, long)
    torch.manual_seed(0)
    model = COUPA(imp.spec, embedding_dim=8, time_dim=8, pp_loss_weight=0.1, pp_rows=16,
                  mark_feature="category_id", position_mode="none", pp_same_item=same_item).train()
    out = model(batch)
    assert torch.isfinite(out["aux_loss"]) and out["aux_loss"].requires_grad
    model.loss(batch, out).backward()
    assert model.time.marks.weight.grad.abs().sum() > 0  # the marks get a gradient only from the likelihood
    if same_item:  # the same-mark term is in the likelihood (repeat categories are common here)
        assert model.time.self_excite.bias.grad.abs() > 0


def test_coupa_trains_from_config(config_dir):
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment

    cfg = load_experiment(config_dir / "ctr.yaml", "COUPA_test", [
        f"output_dir={config_dir / 'runs'}", f"ledger={config_dir / 'l.jsonl'}"])
    r = run_experiment(cfg, log=lambda *_: None)
    assert 0.0 <= r.test["AUC"] <= 1.0 and r.epochs_run >= 1


def test_explain_coupa_writes_intensity_and_examination(config_dir):
    import json

    from edgerec.cli import main
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment

    cfg = load_experiment(config_dir / "ctr.yaml", "COUPA_test", [
        f"output_dir={config_dir / 'runs'}", f"ledger={config_dir / 'l.jsonl'}", "train.epochs=1"])
    r = run_experiment(cfg, log=lambda *_: None)
    assert main(["explain", "--run", r.run_dir]) == 0
    out = __import__("pathlib").Path(r.run_dir) / "explain"
    for name in ("intensity.png", "examination.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lam = json.loads((out / "intensity.json").read_text())
    assert np.asarray(lam["log_intensity"]).shape[1:] == (8, 168)
    assert set(lam["pearson_learned_vs_planted"]) == {"coffee", "breakfast", "food delivery", "hot pot",
                                                       "cinema", "bubble tea"}
    ex = json.loads((out / "examination.json").read_text())
    assert ex["segment_by"].startswith("true browsing segment") and set(ex["learned"]) == set(ex["true"])


@pytest.mark.parametrize("use_pp,history,decay,excitation,same_item,pp_units", [
    (True, "longest", True, "attention", False, (64,)), (False, "longest", True, "attention", False, (64,)),
    (True, "empty", True, "attention", False, (64,)), (True, "longest", False, "attention", False, (64,)),
    (True, "longest", True, "sum", False, (64,)), (True, "empty", True, "sum", False, (64,)),
    (True, "longest", False, "attention", True, (64,)), (True, "empty", False, "attention", True, (64,)),
    (True, "longest", True, "attention", False, (16, 8)), (True, "longest", True, "sum", False, (16, 8)),
    (True, "longest", True, "attention", False, ()), (True, "longest", False, "sum", False, ())])
def test_two_stage_serving_equals_one_pass(imp, use_pp, history, decay, excitation, same_item, pp_units):
    """Stage 1 (user side, once) + stage 2 (200 candidates) == the single-pass forward, within 1e-5;
    also for a user with no history (the dense serving path has its own N = 0 branch) and for an
    excitation MLP of two hidden layers or none (the serving path pools before its last layer)."""
    torch.manual_seed(0)
    model = COUPA(imp.spec, embedding_dim=8, use_point_process=use_pp, pp_decay=decay, pp_units=pp_units,
                  pp_excitation=excitation, pp_same_item=same_item).eval()
    if same_item:
        _nonzero_self_kernel(model.time)
    assert (model.time is not None and model.time.raw_decay is not None) == (use_pp and decay)
    sp = imp.splits["test"]
    row = int(np.argmax(sp.hist_end - sp.hist_start))
    one = imp.make_batch(sp, np.array([row]))
    if history == "empty":
        one = {k: torch.zeros_like(v) if k.startswith("hist_") else v for k, v in one.items()}
    items = torch.from_numpy(np.random.default_rng(0).integers(1, imp.spec.n_items, 200))
    bought = one["hist_item"][one["hist_mask"]]
    if same_item and len(bought):  # some candidates the user bought before: the same-item term fires
        items[:len(bought)] = bought
    feats = {n: torch.from_numpy(codes[items.numpy()]) for n, codes in imp.item_feats.items()}
    cache = model.serve_user({k: v for k, v in one.items() if k not in ("item", "label", "position")})
    two_stage = model.serve_candidates(cache, items, feats)
    full = {k: v.expand(200, *v.shape[1:]) for k, v in one.items()}
    full.update(item=items, **{f"item_{n}": c for n, c in feats.items()})
    with torch.no_grad():
        single = model(full)["y_pred"]
    assert (two_stage - single).abs().max() <= 1e-5


# ---- evaluation integrity: marks, causality, out-of-vocabulary ids, what each switch removes

def test_likelihood_marks_are_exactly_the_categories_that_occur(imp):
    """The compensator Σ_c ∫λ_c integrates every mark of the table: the table must hold the side
    feature's real categories (codes 1.., fed as code - 1), not also a mark for code 0 = unknown that
    no event ever has."""
    model = COUPA(imp.spec, embedding_dim=8, time_dim=8, pp_loss_weight=0.1, mark_feature="category_id",
                  position_mode="none")
    codes = imp.item_feats["category_id"][1:]  # (n_items - 1,) the real items' category codes
    occurring = set((codes[codes > 0] - 1).tolist())  # the marks the likelihood can be fed
    assert set(range(model.time.marks.num_embeddings)) == occurring
    assert model.time.marks.num_embeddings == imp.spec.item_features["category_id"] - 1


def _with_events_at(b: dict, offsets_s: list[int], real: bool) -> dict:
    """`b` with history slots appended (most recent last), one per offset, at the target's own time
    + offset and of the target item itself (so the same-item term would fire); real=False: the same
    slots as padding. Both versions have the same (B, L + k) layout."""
    from edgerec.features.time import pack_slots

    B, k = len(b["item"]), len(offsets_s)
    extra = {"hist_item": b["item"][:, None].expand(-1, k),
             "hist_ts": b["ts"][:, None] + torch.tensor(offsets_s)[None],
             "hist_mask": torch.full((B, k), real),
             "hist_category_id": b["item_category_id"][:, None].expand(-1, k),
             "hist_position": torch.ones(B, k, dtype=torch.int64)}  # (B, k) each
    extra["hist_slots"] = pack_slots(extra["hist_ts"])
    return {**b, **{n: torch.cat([b[n], v.to(b[n].dtype)], 1) for n, v in extra.items()}}


@pytest.mark.parametrize("excitation,same_item", [("attention", False), ("sum", False), ("attention", True)])
def test_events_at_or_after_the_target_time_do_not_score(imp, excitation, same_item):
    """The likelihood (dense path) only reads events strictly before t; the scoring paths must too: a
    history event with Δt = 0 (logged with the target's own timestamp) or Δt < 0 scores exactly like
    padding, in the training forward and in two-stage serving."""
    torch.manual_seed(0)
    model = COUPA(imp.spec, embedding_dim=8, time_dim=8, position_mode="none", pp_excitation=excitation,
                  pp_same_item=same_item).eval()
    if same_item:
        _nonzero_self_kernel(model.time)
    sp = imp.splits["train"]
    batch = imp.make_batch(sp, np.flatnonzero(sp.hist_end - sp.hist_start >= 2)[:8])  # something to attend
    with_events = _with_events_at(batch, [0, 3600], real=True)
    padding = _with_events_at(batch, [0, 3600], real=False)
    with torch.no_grad():
        got, want = model(with_events), model(padding)
    torch.testing.assert_close(got["y_pred"], want["y_pred"], rtol=0, atol=0)
    assert torch.all(got["attention"][:, -2:] == 0)

    def served(b, row):  # serve_user + serve_candidates for one request of `b`, its own item first
        one = {k: v[row:row + 1] for k, v in b.items()}
        cache = model.serve_user({k: v for k, v in one.items() if k not in ("item", "label", "position")})
        items = torch.cat([one["item"], torch.arange(1, 20)])  # (C,)
        codes = torch.from_numpy(imp.item_feats["category_id"])[items]
        return model.serve_candidates(cache, items, {"category_id": codes})

    for row in range(len(batch["item"])):
        torch.testing.assert_close(served(with_events, row), served(padding, row), rtol=0, atol=0)


def test_packed_and_dense_intensity_ignore_the_same_events():
    """Layer level: an event at the query time or later takes no attention and no excitation in the
    packed, the one-history (serving) and the dense path alike."""
    torch.manual_seed(0)
    pp = PointProcessIntensity(8, time_dim=8, units=(16,), same_item=True)
    _nonzero_self_kernel(pp)
    ts, hist_ts, mask, e_hist, e_t = _history()
    hist_ts = hist_ts.clone()
    hist_ts[:, -1] = ts  # the most recent event at the query time ...
    hist_ts[1, -2] = ts[1] + 600  # ... and one after it
    same_dense = torch.ones(*mask.shape, dtype=torch.bool)  # every event is the target item
    causal = mask & (hist_ts < ts[:, None])  # (B, L) what the intensity may read
    dense = pp.dense_log_intensity(e_t[:, None], ts[:, None], e_hist, hist_ts, mask, same=same_dense[:, None])
    for m in (mask, causal):
        packed = PackedHistory(m)
        out = pp(e_t, ts, packed.pack(e_hist), packed.pack(hist_ts), packed, same=packed.pack(same_dense))
        torch.testing.assert_close(out["log_intensity"], dense[:, 0], rtol=1e-5, atol=1e-5)
    for b in range(len(ts)):  # serving: the 5 candidates e_t[b] + noise against row b's history
        packed = PackedHistory(mask[b:b + 1])
        hist = pp.serving_history(pp.history_side(ts[b:b + 1], packed.pack(e_hist[b:b + 1]),
                                                  packed.pack(hist_ts[b:b + 1]), packed))
        cand = e_t[b] + 0.1 * torch.randn(5, 8)
        one = pp.target_side_one_history(cand, ts[b].expand(5), hist, same=torch.ones(5, int(mask[b].sum()),
                                                                                       dtype=torch.bool))
        ref = pp.dense_log_intensity(cand[None], ts[b].expand(1, 5), e_hist[b:b + 1], hist_ts[b:b + 1],
                                     mask[b:b + 1], same=same_dense[b:b + 1, None].expand(1, 5, -1))[0]
        torch.testing.assert_close(one["log_intensity"], ref, rtol=1e-5, atol=1e-5)


def _one_request(target: int, hist_items: list[int]) -> dict[str, torch.Tensor]:
    """A batch of one sample, its history one event per hour before the target time."""
    L, ts = len(hist_items), torch.tensor([1_700_000_000])
    return {"user": torch.tensor([1]), "item": torch.tensor([target]), "ts": ts, "label": torch.tensor([1.0]),
            "hist_item": torch.tensor([hist_items]), "hist_ts": ts[:, None] - 3600 * torch.arange(L, 0, -1)[None],
            "hist_mask": torch.ones(1, L, dtype=torch.bool)}


def _same_item_model(spec: FeatureSpec, twins: dict[int, int], same_item: bool = True) -> COUPA:
    """COUPA (with a non-zero same-item kernel when same_item is on) in which each `twins` pair
    item -> twin shares one embedding: swapping one for the other in a history can then only matter
    through the exact-match (same-item) term."""
    torch.manual_seed(0)
    model = COUPA(spec, embedding_dim=8, time_dim=8, position_mode="none", pp_same_item=same_item).eval()
    if same_item:
        _nonzero_self_kernel(model.time)
    with torch.no_grad():
        for item, twin in twins.items():
            model.emb.item.weight[twin] = model.emb.item.weight[item]
    return model


def _served(model: COUPA, request: dict, items: torch.Tensor) -> torch.Tensor:
    cache = model.serve_user({k: v for k, v in request.items() if k not in ("item", "label")})
    return model.serve_candidates(cache, items)


def test_out_of_vocabulary_ids_never_match_each_other():
    """Every id the run never saw maps to spec.oov_item: an unknown candidate against unknown history
    items is not a repurchase, so the same-item kernel must not fire for it (training forward and
    serving), while a known item against itself still does."""
    spec = FeatureSpec(n_users=4, n_items=10, max_len=4)
    oov, other = spec.oov_item, 8  # `other`: a known item with the OOV embedding, never equal to oov
    model = _same_item_model(spec, {oov: other})
    oov_hist, other_hist = _one_request(oov, [oov] * 4), _one_request(oov, [other] * 4)
    with torch.no_grad():
        torch.testing.assert_close(model(oov_hist)["y_pred"], model(other_hist)["y_pred"], rtol=0, atol=0)
        items = torch.tensor([oov, 3])  # (C,) an unknown and a known candidate
        torch.testing.assert_close(_served(model, oov_hist, items), _served(model, other_hist, items),
                                   rtol=0, atol=0)
        assert not model.same_item(oov_hist["hist_item"], oov_hist["item"][:, None]).any()
        # the check can fail: the known item against its own history does fire the kernel
        fires = model(_one_request(other, [other] * 4))["y_pred"]
        assert not torch.allclose(fires, model(_one_request(other, [oov] * 4))["y_pred"])


@pytest.mark.parametrize("same_item", [False, True])
def test_pp_same_item_false_ignores_which_history_item_is_the_target(same_item):
    """pp_same_item = False removes the exact-match input: with twin items (equal embeddings) the
    score cannot tell the target item from its twin in the history; with the term on it can."""
    spec = FeatureSpec(n_users=4, n_items=10, max_len=4)
    model = _same_item_model(spec, {3: 7}, same_item=same_item)
    bought, twin = _one_request(3, [3, 5, 3, 6]), _one_request(3, [7, 5, 7, 6])
    with torch.no_grad():
        a, b = model(bought)["y_pred"], model(twin)["y_pred"]
        served = _served(model, bought, torch.tensor([3])), _served(model, twin, torch.tensor([3]))
    assert torch.equal(a, b) == (not same_item)
    assert torch.equal(*served) == (not same_item)


@dataclass(frozen=True)
class Reading:
    """A COUPA configuration, the mode it runs in and the output that is compared."""
    args: dict
    train: bool = False
    output: str = "y_pred"


def _move_times(b: dict) -> dict:
    """Target time moved by 5 h, every history event by a different amount: new gaps and new slots."""
    from edgerec.features.time import pack_slots

    hist_ts = torch.where(b["hist_mask"], b["hist_ts"] - 7200 * torch.arange(b["hist_ts"].shape[1]), 0)  # (B, L)
    return dict(b, ts=b["ts"] + 5 * 3600 + 17, hist_ts=hist_ts, hist_slots=pack_slots(hist_ts))


def _move_positions(b: dict) -> dict:
    """Another displayed position for the target and for every past click (the 6 positions of o2o-sim:tiny,
    1..6 -> 2..6, 1)."""
    return dict(_move_click_positions(b), position=b["position"] % 6 + 1)


def _move_click_positions(b: dict) -> dict:
    return dict(b, hist_position=torch.where(b["hist_mask"], b["hist_position"] % 6 + 1, 0))


# What each COUPA switch (bench/coupa.py's variants and the model's flags) stops reading: the switched
# configuration, the perturbation of that input, and a reference configuration that does read it
COUPA_SWITCHES = {
    "w/o TPP: no time": (Reading(dict(use_point_process=False)), _move_times, Reading({})),
    "personalized serves without positions": (Reading({}), _move_positions, Reading({}, True, "log_click")),
    "pal serves without positions": (Reading(dict(position_mode="pal")), _move_positions,
                                     Reading(dict(position_mode="pal"), True, "log_click")),
    "feature serves without positions": (Reading(dict(position_mode="feature")), _move_positions,
                                         Reading(dict(position_mode="feature"), True)),
    "none trains without positions": (Reading(dict(position_mode="none"), True), _move_positions,
                                      Reading(dict(position_mode="feature"), True)),
    "w/o click history": (Reading(dict(use_click_history=False), True, "log_examination"), _move_click_positions,
                          Reading({}, True, "log_examination")),
}


@pytest.mark.parametrize("name", sorted(COUPA_SWITCHES))
def test_every_coupa_switch_removes_its_input(imp, name):
    """The switched model's output is unchanged when the input it drops changes; the reference
    model's changes (so the check can fail). pp_same_item: see the test above."""
    switched, perturb, reference = COUPA_SWITCHES[name]
    sp = imp.splits["train"]
    batch = imp.make_batch(sp, np.flatnonzero(sp.hist_end - sp.hist_start >= 2)[:32])  # (32, L) with histories

    def changes(r: Reading) -> bool:
        torch.manual_seed(0)
        model = COUPA(imp.spec, embedding_dim=8, time_dim=8, **r.args).train(r.train)
        with torch.no_grad():
            return not torch.equal(model(dict(batch))[r.output], model(perturb(batch))[r.output])

    assert not changes(switched)
    assert changes(reference)


@pytest.mark.parametrize("n_marks", [1, 3])
def test_log_likelihood_of_a_constant_intensity_is_the_poisson_value(n_marks):
    """With no excitation and a constant base rate every mark has λ_c(t) = λ, so the log-likelihood
    of an event after a gap Δ is log λ - C λ Δ (Δ in hours) exactly: the Monte-Carlo integral of a
    constant is exact, whatever the points drawn."""
    torch.manual_seed(0)
    pp = PointProcessIntensity(8, time_dim=8, units=(16,), n_marks=n_marks)
    with torch.no_grad():
        pp.excite.net[-1].weight.zero_()  # ψ = 0
        pp.excite.net[-1].bias.zero_()
        pp.base.net[-1].weight.zero_()  # μ = 0.3 for every user, mark and time
        pp.base.net[-1].bias.fill_(0.3)
    _, hist_ts, mask, _, _ = _history()  # (3, 6), row 0 with two padding slots
    marks = torch.randint(0, n_marks, mask.shape)
    ll = pp.log_likelihood(marks, hist_ts, mask, events=4, mc_points=3)  # (B,)
    lam = torch.nn.functional.softplus(torch.tensor(0.3)) + 1e-6  # the layer's λ, with its 1e-6 floor
    gap_h = (hist_ts[:, 2:] - hist_ts[:, 1:-1]).double() / 3600  # (B, 4): the last 4 events' gaps
    ok = mask[:, 2:] & mask[:, 1:-1]  # (B, 4) both ends real
    per_event = torch.log(lam.double()) - n_marks * lam.double() * gap_h  # (B, 4)
    want = (per_event * ok).sum(-1) / ok.sum(-1)
    assert ok[0].sum() == 3 and ok[1:].all()  # the padding row scores 3 events, the others 4
    torch.testing.assert_close(ll.double(), want, rtol=1e-5, atol=1e-5)
