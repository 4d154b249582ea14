"""DiCycle and its time layers: the reconstructed equations hold, the ablation flags do what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgerec.data.samples import build_dicycle
from edgerec.features.time import time_slots
from edgerec.models import DIN, DiCycle
from edgerec.models.layers import AbsoluteTimeEncoding, FourierTimeEncoding, QueryAttention


@pytest.fixture(scope="module")
def samples(ml100k):
    return build_dicycle(ml100k, max_len=20)


def test_absolute_time_table_equals_direct_computation():
    torch.manual_seed(0)
    enc = AbsoluteTimeEncoding(8, ("hour", "weekday"), surrounding_range=2, kernel_size=3)
    ts = torch.tensor([1767571200 + 3600 * 23 + 1800, 1767571200 + 86400 * 6])  # Mon 23:30, Sun 00:00
    got = enc(ts)  # (2, 8)
    slots = time_slots(ts)
    for b in range(2):
        want = torch.zeros(8)
        for g in ("hour", "weekday"):
            E, P, s = enc.slots[g].weight, enc.slots[g].num_embeddings, int(slots[g][b])
            for j in range(3):
                win = torch.stack([E[(s + o) % P] for o in range(-j, j + 1)])  # (2j+1, d), cyclic
                conv = torch.relu(enc.convs[g](win.T.unsqueeze(0)))[0]  # (d, 2j+1)
                want = want + conv.max(dim=-1).values
        torch.testing.assert_close(got[b], want)


def test_absolute_time_neighbours_wrap_around():
    enc = AbsoluteTimeEncoding(4, ("hour",), surrounding_range=1)
    with torch.no_grad():
        enc.slots["hour"].weight.zero_()
        enc.slots["hour"].weight[0].fill_(1.0)  # only midnight is non-zero
        enc.convs["hour"].weight.fill_(1.0)
        enc.convs["hour"].bias.zero_()
    table = enc.slot_table("hour")
    assert table[23].abs().sum() > 0 and table[1].abs().sum() > 0  # hour 0 is a neighbour of 23 and 1
    assert table[12].abs().sum() == 0


def test_fourier_kernel_depends_only_on_the_gap_and_has_a_daily_period():
    enc = FourierTimeEncoding(16)
    assert torch.any(torch.isclose(2 * math.pi / enc.omega, torch.tensor(24.0)))
    a, b = enc(torch.tensor([5.0, 105.0])), enc(torch.tensor([17.0, 117.0]))
    torch.testing.assert_close((a[0] * b[0]).sum(), (a[1] * b[1]).sum())  # translation invariance
    torch.testing.assert_close((a[0] * b[0]).sum(), enc.kernel(torch.tensor(12.0)))
    torch.testing.assert_close(enc(torch.zeros(1)).norm(), torch.tensor(math.sqrt(0.5)))


def test_query_attention_masks_and_handles_empty_rows():
    torch.manual_seed(0)
    att = QueryAttention(4)
    q, x = torch.randn(2, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    out, w = att(q, x, mask)
    assert torch.all(w[0, 2:] == 0) and torch.isclose(w[0].sum(), torch.tensor(1.0))
    assert torch.all(out[1] == 0) and torch.all(w[1] == 0)
    x2 = x.clone()
    x2[0, 2:] = 100.0  # padded content must not matter
    torch.testing.assert_close(att(q, x2, mask)[0], out)


def test_gate_threshold_filters_and_minus_one_keeps_everything(samples):
    torch.manual_seed(0)
    batch = samples.make_batch(samples.splits["test"], np.arange(256))
    full = DiCycle(samples.spec, gate_threshold=-1.0).eval()
    with torch.no_grad():
        out = full(batch)
    assert float(out["filtered_fraction"]) == 0.0
    strict = DiCycle(samples.spec, gate_threshold=0.5).eval()
    strict.load_state_dict(full.state_dict())
    with torch.no_grad():
        out = strict(batch)
    gate = out["gate"]
    assert float(out["filtered_fraction"]) > 0
    assert torch.all((gate == 0) | (gate >= 0.5))


@pytest.mark.parametrize("flags", [
    dict(use_absolute_time=False), dict(use_relative_time=False), dict(use_time_cycle=False),
    dict(surrounding_range=0), dict(mask_filtered=True, gate_threshold=0.3), dict(feed_target=True), dict(feed_target=True, feed_target_time=True),
    dict(granularities=("hour", "weekday", "month", "dom")),
])
def test_ablations_run_and_train(samples, flags):
    torch.manual_seed(0)
    model = DiCycle(samples.spec, embedding_dim=8, **flags)
    batch = samples.make_batch(samples.splits["train"], np.arange(128))
    out = model(batch)
    model.loss(batch, out).backward()
    assert torch.isfinite(out["logit"]).all()
    if not flags.get("use_time_cycle", True):
        assert "gate" not in out


def test_score_depends_on_target_time_unlike_din(samples):
    """Moving the target time shifts DiCycle's score (Fig. 3 of the paper); DIN is blind to it."""
    torch.manual_seed(0)
    batch = samples.make_batch(samples.splits["test"], np.arange(32))
    later = dict(batch, ts=batch["ts"] + 5 * 3600)
    dc, din = DiCycle(samples.spec).eval(), DIN(samples.spec).eval()
    with torch.no_grad():
        assert not torch.allclose(dc(batch)["logit"], dc(later)["logit"])
        torch.testing.assert_close(din(batch)["logit"], din(later)["logit"])


def test_explain_writes_plots(config_dir):
    import json

    from edgerec.cli import main
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment

    cfg = load_experiment(config_dir / "ctr.yaml", "DiCycle_test", [
        f"output_dir={config_dir / 'runs'}", f"ledger={config_dir / 'l.jsonl'}", "train.epochs=1"])
    r = run_experiment(cfg, log=lambda *_: None)
    assert main(["explain", "--run", r.run_dir, "--samples", "32"]) == 0
    out = __import__("pathlib").Path(r.run_dir) / "explain"
    for name in ("time_preference.png", "relative_kernel.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    k = json.loads((out / "relative_kernel.json").read_text())
    assert abs(k["kernel"][0] - 0.5) < 1e-6  # <Φ(0), Φ(0)> = (1/d) * d/2
    sweep = json.loads((out / "time_preference.json").read_text())
    assert len(sweep["categories"]) == 8 and np.asarray(sweep["relative_by_hour_of_week"]).shape == (8, 168)
    # the six daily/weekly categories of the simulator get their planted curve and a correlation
    assert set(sweep["pearson_learned_vs_planted"]) == {"coffee", "breakfast", "food delivery", "hot pot",
                                                         "cinema", "bubble tea"}
    assert all(r is None or -1 <= r <= 1 for r in sweep["pearson_learned_vs_planted"].values())
    assert "NaN" not in (out / "time_preference.json").read_text()  # strict JSON
    # relative cycles: the model's logit against the gap since the last same-category behaviour
    assert (out / "gap_response.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gap = json.loads((out / "gap_response.json").read_text())
    assert gap["categories"] == ["taxi", "groceries"] and len(gap["gap_hours"]) == 14 * 24
    assert np.asarray(gap["logit_by_gap"]).shape == (2, 14 * 24)
    assert all(-1 <= r <= 1 for r in gap["pearson_learned_vs_planted"].values())


@pytest.fixture(scope="module")
def sim_samples():
    from edgerec.data.registry import load

    ds = load("o2o-sim:tiny")
    return ds, build_dicycle(ds, max_len=20)


def test_gap_sweep_moves_only_the_one_behaviour(sim_samples):
    """Without time encodings the gap cannot matter (flat curve); with them it does. The put-back
    behaviour is the only same-category one left in the history."""
    from edgerec.train.explain import gap_response_sweep, item_categories

    ds, samples = sim_samples
    cats, names = item_categories(samples, ds)
    torch.manual_seed(0)
    blind = DiCycle(samples.spec, embedding_dim=8, use_absolute_time=False, use_relative_time=False)
    flat = gap_response_sweep(blind, samples, cats, names, ["taxi"], days=2, n=16)
    assert np.ptp(flat["logit_by_gap"][0]) < 1e-5
    timed = gap_response_sweep(DiCycle(samples.spec, embedding_dim=8), samples, cats, names, ["taxi"], days=2, n=16)
    assert np.ptp(timed["logit_by_gap"][0]) > 1e-4
    assert flat["gap_hours"][0] == 0.5 and len(flat["gap_hours"]) == 48


def test_planted_gap_curves_peak_at_the_planted_periods():
    from dataclasses import asdict

    from edgerec.data.simulator import DEFAULT_CATEGORIES
    from edgerec.train.explain import planted_gap_curves

    gaps = np.arange(0.5, 14 * 24, 1.0)
    truth = planted_gap_curves([asdict(c) for c in DEFAULT_CATEGORIES], [c.name for c in DEFAULT_CATEGORIES], gaps)
    assert set(truth) == {"taxi", "groceries"}  # only the relative categories
    assert gaps[np.argmax(truth["taxi"])] in (23.5, 24.5) and gaps[np.argmax(truth["groceries"])] in (167.5, 168.5)
    assert truth["taxi"][int(np.searchsorted(gaps, 48.5))] > 0.5  # second peak, 0.6 of the first


def test_time_shift_keeps_every_gap_and_is_identity_at_zero(samples):
    from edgerec.train.explain import shift_sample_time

    batch = samples.make_batch(samples.splits["test"], np.arange(16))
    moved = shift_sample_time(batch, batch["ts"] + 3 * 86400 + 3600)
    m = batch["hist_mask"]
    gap = (batch["ts"][:, None] - batch["hist_ts"])[m]
    torch.testing.assert_close((moved["ts"][:, None] - moved["hist_ts"])[m], gap)
    assert "hist_slots" not in moved  # recomputed from the moved timestamps
    model = DiCycle(samples.spec).eval()
    with torch.no_grad():  # no shift: same scores as with the precomputed slots
        torch.testing.assert_close(model(shift_sample_time(batch, batch["ts"]))["logit"], model(batch)["logit"])


def test_cycle_agreement_is_one_for_the_planted_curve():
    from edgerec.data.simulator import DEFAULT_CATEGORIES
    from edgerec.train.explain import cycle_agreement, planted_curves

    from dataclasses import asdict
    names = [c.name for c in DEFAULT_CATEGORIES]
    truth = planted_curves([asdict(c) for c in DEFAULT_CATEGORIES], names)
    rel = np.zeros((len(names), 168))
    for n, curve in truth.items():
        rel[names.index(n)] = 2.0 * np.asarray(curve) - 1.0
    r = cycle_agreement({"categories": names, "relative_by_hour_of_week": rel.tolist()}, truth)
    assert all(abs(v - 1.0) < 1e-9 for v in r.values())
    # bins are hour:30, so a peak planted at 07:00 sits between bins 6 and 7
    assert np.argmax(truth["breakfast"][:24]) in (6, 7) and np.argmax(truth["hot pot"]) in (4 * 24 + 18, 4 * 24 + 19)


@pytest.mark.parametrize("bias", [False, True])
def test_query_attention_equals_projected_textbook_form(bias):
    torch.manual_seed(0)
    att = QueryAttention(6, bias=bias)
    q, x = torch.randn(3, 6), torch.randn(3, 4, 6)
    mask = torch.tensor([[True, True, True, False], [False, True, True, True], [False] * 4])
    out, w = att(q, x, mask)
    logits = torch.einsum("bd,bld->bl", att.w_q(q), att.w_k(x)) / 6 ** 0.5
    ref_w = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, torch.einsum("bl,bld->bd", ref_w, att.w_v(x)))


def test_packed_slots_round_trip_and_batch_gather(samples):
    from edgerec.features.time import pack_slots, time_slots, unpack_slots

    ts = np.random.default_rng(1).integers(0, 4_000_000_000, 1000)
    back, direct = unpack_slots(pack_slots(ts)), time_slots(ts)
    for g in direct:
        np.testing.assert_array_equal(back[g], direct[g])
    b = samples.make_batch(samples.splits["test"], np.arange(64))
    m = b["hist_mask"]
    np.testing.assert_array_equal(b["hist_slots"][m].numpy(), pack_slots(b["hist_ts"][m].numpy()))
    enc = AbsoluteTimeEncoding(8)
    torch.testing.assert_close(enc(b["hist_ts"])[m], enc(packed=b["hist_slots"])[m])  # padding is masked later


def test_empirical_gap_lift_equals_a_plain_loop(sim_samples):
    """The vectorised per-user running max gives the same gaps as walking each user's log."""
    from edgerec.train.explain import empirical_gap_lift

    ds, _ = sim_samples
    gaps = np.arange(0.5, 14 * 24, 1.0)
    got = empirical_gap_lift(ds, ["taxi", "groceries"], gaps, min_exposures=5)
    e = ds.events
    cat_of = dict(zip(ds.items.column("item_id").to_pylist(), ds.items.column("category").to_pylist()))
    rows = sorted(((u, t, i, y) for i, (u, t, it, y) in enumerate(zip(
        e.column("user_id").to_pylist(), e.column("ts").to_pylist(), e.column("item_id").to_pylist(),
        e.column("label").to_pylist())) if cat_of[it] == "taxi"))
    last, n, k = {}, np.zeros(len(gaps)), np.zeros(len(gaps))
    for u, t, _, y in rows:
        if u in last:
            b = int(np.floor((t - last[u]) / 3600.0))
            if b < len(gaps):
                n[b] += 1
                k[b] += y
        if y == 1:
            last[u] = t
    base = np.mean([y for *_, y in rows])
    want = [float(np.log(k[j] / n[j] / base)) if n[j] >= 5 and k[j] > 0 else None for j in range(len(gaps))]
    assert sum(w is not None for w in want) > 20  # the test has something to compare
    for a, b in zip(got["taxi"], want):
        assert (a is None and b is None) or abs(a - b) < 1e-9


def test_whole_minus_half_day_separates_a_daily_cycle_from_recency():
    from edgerec.train.explain import gap_grid, whole_minus_half_day

    g = gap_grid(14)
    assert whole_minus_half_day(g, np.cos(2 * np.pi * g / 24)) == pytest.approx(2.0, abs=0.05)
    assert whole_minus_half_day(g, -np.exp(-g / 100.0)) == pytest.approx(0.0, abs=0.1)  # recency: smooth decay
    assert abs(whole_minus_half_day(g, np.cos(2 * np.pi * g / 168))) < 0.2  # a weekly cycle is not a daily one


# ---- every ablation removes its input: what each variant of bench/ctr.py stops reading, as a
# perturbation of the batch (or of the model part only that input reaches), given the model and a batch

def _move_calendar(model, b):
    """Request and history moved by 3 days 5 h together: every gap kept, every calendar slot moved."""
    from edgerec.train.explain import shift_sample_time

    return shift_sample_time(b, b["ts"] + 3 * 86400 + 5 * 3600)


def _move_gaps(model, b):
    """Every past event 7 h earlier, its calendar slots (the precomputed hist_slots) kept: only the gaps move."""
    assert "hist_slots" in b  # else the absolute encoding would read the moved hist_ts too
    return dict(b, hist_ts=torch.where(b["hist_mask"], b["hist_ts"] - 7 * 3600, 0))


def _move_by_four_weeks(model, b):
    """28 days later: same hour and weekday, another month (ml-100k spans September to April)."""
    from edgerec.train.explain import shift_sample_time

    return shift_sample_time(b, b["ts"] + 28 * 86400)


def _raise_gate_threshold(model, b):
    """The gated filter's cut-off δ: only the time-cycle module reads it."""
    model.gate_threshold = 0.5
    return b


def _mask_filtered_behaviours(model, b):
    """How filtered behaviours enter the attention (as zeros or masked): moot when nothing is filtered."""
    model.mask_filtered = True
    return b


def _redraw_unused_hours(model, b):
    """New embeddings for the hour slots no event of the batch falls in: with J > 0 they are the
    neighbours that the slot tables of the used hours convolve; with J = 0 nothing reads them."""
    from edgerec.features.time import unpack_slots

    hist_hours = unpack_slots(b["hist_slots"][b["hist_mask"]])["hour"]  # (N,)
    used = set(time_slots(b["ts"])["hour"].tolist()) | set(hist_hours.tolist())
    unused = [h for h in range(24) if h not in used]
    assert unused  # the batch must leave some hours free for the check to mean anything
    table = model.absolute.slots["hour"].weight  # (24, d)
    with torch.no_grad():
        table[unused] = torch.randn(len(unused), table.shape[1])
    return b


REMOVED_INPUT = {
    "w/o ATC": _move_calendar,
    "w/o RTC": _move_gaps,
    "w/o TCM": _raise_gate_threshold,
    "w/o gate": _mask_filtered_behaviours,
    "J=0": _redraw_unused_hours,
    "-month": _move_by_four_weeks,
    "+target head -month": _move_by_four_weeks,
}
NOT_A_REMOVAL = {  # variants that add an input or only change training
    "+target head": "adds e_a and q_a to the head's input",
    "omega lr/100": "a learning-rate factor (tests/test_trainer.py: lr_scale)",
    "omega frozen": "a learning-rate factor (tests/test_trainer.py: lr_scale)",
}


def _model_args(overrides: list[str]) -> dict:
    """The model_args.* keys of a variant's config overrides, parsed as the config loader does."""
    from edgerec.train.config import parse_override

    return {keys[1]: value for keys, value in map(parse_override, overrides) if keys[0] == "model_args"}


def test_every_variant_is_checked_or_adds_nothing_to_remove():
    from edgerec.models.dicycle import ABLATIONS, EXTENSIONS

    assert set(ABLATIONS) | set(EXTENSIONS) == set(REMOVED_INPUT) | set(NOT_A_REMOVAL)
    assert set(ABLATIONS) <= set(REMOVED_INPUT)


@pytest.mark.parametrize("name", sorted(REMOVED_INPUT))
def test_every_ablation_removes_its_input(samples, name):
    """The variant's logits are unchanged when the input it removes changes, the full model's are not
    (so the check can fail). The overrides are the ones bench/ctr.py applies."""
    from edgerec.models.dicycle import ABLATIONS, EXTENSIONS

    batch = samples.make_batch(samples.splits["test"], np.arange(32))

    def changes(args: dict) -> bool:
        torch.manual_seed(0)
        model = DiCycle(samples.spec, embedding_dim=8, **args).eval()
        with torch.no_grad():
            before = model(batch)["logit"]
            return not torch.equal(before, model(REMOVED_INPUT[name](model, batch))["logit"])

    assert not changes(_model_args({**ABLATIONS, **EXTENSIONS}[name]))
    assert changes({})
