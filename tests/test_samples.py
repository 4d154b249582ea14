"""Sample builders: leave-last-out splits, leak-free negatives and histories, batch gathering."""

from __future__ import annotations

import numpy as np
import pytest

import pyarrow as pa
import pyarrow.compute as pc

from edgerec.data.samples import build_dicycle, build_impressions
from edgerec.data.schema import EventDataset, make_events
from edgerec.errors import ConfigError


@pytest.fixture(scope="module")
def ml_samples(ml100k):
    return build_dicycle(ml100k, max_len=20, seed=7)


def _user_sequences(ds):
    e = ds.events
    u, i, t = (e.column(c).to_numpy() for c in ("user_id", "item_id", "ts"))
    order = np.lexsort((np.arange(len(t)), t, u))
    return u[order], i[order], t[order]


def _toy(rows: list[tuple[int, int, int]], name: str = "toy") -> EventDataset:
    """A log of positive interactions (user, item, ts), in file order."""
    u, i, t = (list(c) for c in zip(*rows))
    return EventDataset(name, make_events({"user_id": u, "item_id": i, "ts": t, "label": [1] * len(rows),
                                                 "position": pa.nulls(len(rows), pa.int16())}))


def test_leave_last_out_splits(ml100k, ml_samples):
    """Test = every rating of a user's last second, validation = of the second before, training =
    every earlier one but the first second's; each positive has one negative."""
    s = ml_samples
    n_users = 943
    te, va, tr = s.splits["test"], s.splits["valid"], s.splits["train"]
    e = ml100k.events
    u, t = e.column("user_id").to_numpy(), e.column("ts").to_numpy()
    moments = np.unique(np.stack([u, t], 1), axis=0)  # (user, second) pairs, sorted
    last, first = np.r_[moments[1:, 0] != moments[:-1, 0], True], np.r_[True, moments[1:, 0] != moments[:-1, 0]]
    last_ts = dict(zip(moments[last, 0], moments[last, 1]))
    prev_ts = dict(zip(moments[np.flatnonzero(last) - 1, 0], moments[np.flatnonzero(last) - 1, 1]))
    first_ts = dict(zip(moments[first, 0], moments[first, 1]))
    for sp, want in ((te, last_ts), (va, prev_ts)):
        pos = sp.label == 1
        assert len(np.unique(sp.user)) == n_users and pos.sum() * 2 == len(sp)
        raw = s.user_ids[sp.user[pos] - 1]
        assert all(want[int(r)] == ts for r, ts in zip(raw, sp.ts[pos]))
        n_at = sum(int(((u == k) & (t == v)).sum()) for k, v in want.items())
        assert pos.sum() == n_at  # every interaction of that moment, none dropped
    raw_tr = s.user_ids[tr.user - 1]
    assert all(first_ts[int(r)] < ts < prev_ts[int(r)] for r, ts in zip(raw_tr[::97], tr.ts[::97]))
    n_first = sum(int(((u == k) & (t == v)).sum()) for k, v in first_ts.items())
    assert len(tr) // 2 == 100_000 - n_first - (te.label == 1).sum() - (va.label == 1).sum()


def test_same_timestamp_behaviours_are_not_history():
    """Two purchases in one basket (same ts): neither is the other's history, at any split.
    (The old cut by position in the store let the earlier line of a basket into the later's history.)"""
    rows = [(1, 10, 100), (1, 11, 200), (1, 12, 200), (1, 13, 300), (1, 14, 300), (1, 15, 400), (1, 16, 400),
            (1, 17, 500)] + [(2, i, 10 * i) for i in range(20, 60)]  # user 2: a catalogue to draw negatives from
    s = build_dicycle(_toy(rows), max_len=10, seed=0)
    for sp in s.splits.values():
        b = s.make_batch(sp, np.arange(len(sp)))
        m = b["hist_mask"].numpy()
        assert (b["hist_ts"].numpy()[m] < np.repeat(b["ts"].numpy(), m.sum(1))).all()
    one = {name: sp.subset(np.flatnonzero((sp.user == 1) & (sp.label == 1))) for name, sp in s.splits.items()}
    assert one["test"].ts.tolist() == [500] and s.store_ts[one["test"].hist_end[0] - 1] == 400
    assert one["valid"].ts.tolist() == [400, 400]  # both lines of the moment before the test's
    assert s.item_ids[one["valid"].item - 1].tolist() == [15, 16]
    assert one["valid"].hist_end.tolist() == [5, 5]  # neither sees the other (history ends at ts 300)
    assert sorted(one["train"].ts.tolist()) == [200, 200, 300, 300]  # 100: no history; 400: validation's
    assert one["train"].hist_end.tolist() == [1, 1, 3, 3]


def test_history_is_causal_like_serving(tiny_sim):
    """The DiCycle protocol's history equals what serving's feature definition shows at that time."""
    from edgerec.features.definition import Event, FeatureDefinition, UserState

    s = build_dicycle(tiny_sim.dataset, max_len=8, seed=0)
    d = FeatureDefinition(max_len=10_000)  # the whole log folded; the request cut takes the causal part
    clicks = tiny_sim.dataset.events.filter(pc.equal(tiny_sim.dataset.events.column("label"), 1))
    states: dict[int, UserState] = {}
    for n, (u, i, t) in enumerate(zip(*(clicks.column(c).to_pylist() for c in ("user_id", "item_id", "ts")))):
        d.apply_user(states.setdefault(u, UserState()), Event(str(n), u, i, t, "click"))
    te = s.splits["test"]
    b = s.make_batch(te, np.arange(len(te)))
    for r in range(0, len(te), 2):
        raw_user = int(s.user_ids[te.user[r] - 1])
        served = d.user_features(states[raw_user], int(te.ts[r]))
        m = b["hist_mask"].numpy()[r]
        assert b["hist_ts"].numpy()[r][m].tolist() == served["hist_ts"][-8:]
        assert s.item_ids[b["hist_item"].numpy()[r][m] - 1].tolist() == served["hist_item"][-8:]


def test_negatives_never_interacted_and_share_time_and_history(ml_samples):
    s = ml_samples
    for sp in s.splits.values():
        pos, neg = sp.label == 1, sp.label == 0
        np.testing.assert_array_equal(sp.ts[pos], sp.ts[neg])
        np.testing.assert_array_equal(sp.hist_end[pos], sp.hist_end[neg])
        np.testing.assert_array_equal(sp.user[pos], sp.user[neg])
        seen = {(u, i) for u, i in zip(s.splits["train"].user[s.splits["train"].label == 1],
                                       s.splits["train"].item[s.splits["train"].label == 1])}
        seen |= {(u, i) for u, i in zip(s.splits["test"].user[s.splits["test"].label == 1],
                                        s.splits["test"].item[s.splits["test"].label == 1])}
        assert not any((u, i) in seen for u, i in zip(sp.user[neg], sp.item[neg]))


def test_own_history_negatives_do_not_give_the_label_away():
    """A repeat positive's negative comes from the user's own earlier history and was not taken at that
    moment. Under the literature's sampler it never comes from the history, so 'the candidate is in
    the history' would mean 'positive'."""
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 1000 * t) for u in range(1, 41) for t in range(1, 13)  # 3 items a basket, 8 shared
            for i in rng.choice(np.r_[1:9, 9 + 5 * u: 14 + 5 * u], 3, replace=False)]
    taken = set(rows)
    ds = _toy(rows)
    own = build_dicycle(ds, max_len=50, seed=1, negatives="own_history")
    old = build_dicycle(ds, max_len=50, seed=1, negatives="uniform_unseen")
    for s, from_history in ((own, True), (old, False)):
        for name, sp in s.splits.items():
            neg = np.flatnonzero(sp.label == 0)
            rep = neg[sp.repeat[neg]]  # pairs whose positive is a repeat
            assert len(rep) > 0
            in_hist = np.array([sp.item[j] in set(s.store_item[sp.hist_start[j]:sp.hist_end[j]]) for j in rep])
            assert in_hist.all() if from_history else not in_hist.any(), name
            raw = zip(s.user_ids[sp.user[rep] - 1], s.item_ids[sp.item[rep] - 1], sp.ts[rep])
            assert not any((int(u), int(i), int(t)) in taken for u, i, t in raw), name  # never taken then
    # own_history: a pair's negative is in the history exactly when its positive is
    for sp in own.splits.values():
        pos, neg = sp.label == 1, sp.label == 0
        in_hist = np.array([sp.item[j] in set(own.store_item[sp.hist_start[j]:sp.hist_end[j]])
                            for j in range(len(sp))])
        np.testing.assert_array_equal(in_hist[pos], in_hist[neg])
        np.testing.assert_array_equal(in_hist[pos], sp.repeat[pos])


def test_own_history_builds_for_a_user_who_took_every_item_and_uniform_unseen_says_why_not():
    """User 1 takes the whole catalogue at once, then re-buys one item at a time: every later positive
    is a repeat with eligible history items, so own_history needs no uniform negative for him (it used
    to draw one anyway and fail with a RuntimeError traceback). uniform_unseen has none to give: a
    clear error naming the user."""
    from edgerec.errors import DataFormatError

    rows = [(1, i, 100) for i in (1, 2, 3)] + [(1, 1 + k % 3, 200 + 100 * k) for k in range(6)]
    rows += [(u, 1 + (u + k) % 2, 100 * k + 50) for u in (2, 3, 4) for k in range(1, 6)]  # users who leave item 3
    own = build_dicycle(_toy(rows), max_len=10, seed=1, negatives="own_history")
    sp = own.splits["test"]
    mine = sp.user == np.searchsorted(own.user_ids, 1) + 1
    assert (sp.item[mine & (sp.label == 0)] > 0).all()
    with pytest.raises(DataFormatError, match="took \\(almost\\) every one of the 3 items"):
        build_dicycle(_toy(rows), max_len=10, seed=1, negatives="uniform_unseen")


def test_the_samplers_coincide_without_repeats(ml100k):
    """ml-100k has no repeats: both samplers draw exactly the same negatives there."""
    own = build_dicycle(ml100k, max_len=5, seed=3, negatives="own_history")
    old = build_dicycle(ml100k, max_len=5, seed=3, negatives="uniform_unseen")
    assert not any(sp.repeat.any() for sp in own.splits.values())
    for name in own.splits:
        np.testing.assert_array_equal(own.splits[name].item, old.splits[name].item)
    with pytest.raises(ConfigError, match="data.negatives must be one of"):
        build_dicycle(ml100k, negatives="random")


def test_history_is_strictly_before_target_and_left_padded(ml_samples):
    s = ml_samples
    b = s.make_batch(s.splits["train"], np.arange(4096), max_len=20)
    mask, hist_ts, ts = b["hist_mask"].numpy(), b["hist_ts"].numpy(), b["ts"].numpy()
    assert (hist_ts[mask] < np.repeat(ts, mask.sum(1))).all()
    # left padding: once a row has a real behaviour, every later slot is real too
    assert (np.diff(mask.astype(int), axis=1) >= 0).all()
    assert (b["hist_item"].numpy()[~mask] == 0).all()
    # the most recent behaviour sits in the last slot and is the last one before the target's moment
    sp = s.splits["train"]
    np.testing.assert_array_equal(b["hist_item"].numpy()[:, -1], s.store_item[sp.hist_end[:4096] - 1])


def test_seeded_and_resampled_negatives(ml100k):
    a = build_dicycle(ml100k, max_len=10, seed=1)
    b = build_dicycle(ml100k, max_len=10, seed=1)
    c = build_dicycle(ml100k, max_len=10, seed=2)
    np.testing.assert_array_equal(a.splits["train"].item, b.splits["train"].item)
    assert (a.splits["train"].item != c.splits["train"].item).any()
    r = build_dicycle(ml100k, max_len=10, seed=1, train_negatives="resample")
    before_train, before_test = r.splits["train"].item.copy(), r.splits["test"].item.copy()
    r.on_epoch_start(1)
    assert (r.splits["train"].item != before_train).mean() > 0.4  # negatives redrawn
    np.testing.assert_array_equal(r.splits["train"].item[r.splits["train"].label == 1],
                                  before_train[r.splits["train"].label == 1])  # positives kept
    np.testing.assert_array_equal(r.splits["test"].item, before_test)  # evaluation frozen


def test_side_features_are_aligned(ml100k):
    s = build_dicycle(ml100k, max_len=5, item_features=["genre"], user_features=["gender"])
    b = s.make_batch(s.splits["test"], np.arange(10))
    genre = dict(zip(ml100k.items.column("item_id").to_pylist(), ml100k.items.column("genre").to_pylist()))
    item_vocab = np.unique(ml100k.items.column("item_id").to_numpy())
    names = sorted(set(genre.values()))
    for item_idx, code in zip(b["item"].numpy(), b["item_genre"].numpy()):
        assert names[code - 1] == genre[item_vocab[item_idx - 1]]
    with pytest.raises(ConfigError, match="unknown column 'genrez'"):
        build_dicycle(ml100k, item_features=["genrez"])


def test_impression_protocol(tiny_sim):
    s = build_impressions(tiny_sim.dataset, max_len=8)
    tr, va, te = s.splits["train"], s.splits["valid"], s.splits["test"]
    assert tr.ts.max() < va.ts.min() and va.ts.max() < te.ts.min()  # split by time
    assert len(tr) + len(va) + len(te) == tiny_sim.dataset.events.num_rows  # nothing dropped
    b = s.make_batch(te, np.arange(len(te)))
    m = b["hist_mask"].numpy()
    # history = clicks strictly earlier than the exposure (same-request clicks are not visible)
    assert (b["hist_ts"].numpy()[m] < np.repeat(b["ts"].numpy(), m.sum(1))).all()
    assert set(np.unique(b["position"].numpy())) <= set(range(1, tiny_sim.config.feed_size + 1))


def test_impression_protocol_needs_positions(ml100k):
    with pytest.raises(ConfigError, match="has no display positions"):
        build_impressions(ml100k)


def test_popularity_eval_negatives(ml100k):
    uni = build_dicycle(ml100k, max_len=5, seed=1)
    pop = build_dicycle(ml100k, max_len=5, seed=1, eval_negatives="popularity")
    counts = np.bincount(uni.store_item, minlength=uni.spec.n_items)
    neg_u = uni.splits["test"].item[uni.splits["test"].label == 0]
    neg_p = pop.splits["test"].item[pop.splits["test"].label == 0]
    assert counts[neg_p].mean() > 2 * counts[neg_u].mean()  # popular items drawn far more often
    np.testing.assert_array_equal(uni.splits["train"].item, pop.splits["train"].item)  # training unchanged
    with pytest.raises(ConfigError, match="eval_negatives must be"):
        build_dicycle(ml100k, eval_negatives="hard")
