"""Sample builders: leave-last-out splits, leak-free negatives and histories, batch gathering."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.data.samples import build_dicycle, build_impressions
from edgerec.errors import ConfigError


@pytest.fixture(scope="module")
def ml_samples(ml100k):
    return build_dicycle(ml100k, max_len=20, seed=7)


def _user_sequences(ds):
    e = ds.events
    u, i, t = (e.column(c).to_numpy() for c in ("user_id", "item_id", "ts"))
    order = np.lexsort((np.arange(len(t)), t, u))
    return u[order], i[order], t[order]


def test_leave_last_out_splits(ml100k, ml_samples):
    s = ml_samples
    n_users = 943
    for name in ("valid", "test"):
        sp = s.splits[name]
        assert len(sp) == 2 * n_users and sp.label.sum() == n_users
        assert len(np.unique(sp.user)) == n_users
    # test target is each user's last interaction, validation the second-to-last
    te, va = s.splits["test"], s.splits["valid"]
    pos_te, pos_va = te.label == 1, va.label == 1
    assert np.all(te.hist_end[pos_te] == va.hist_end[pos_va] + 1)
    assert np.all(s.store_item[te.hist_end[pos_te]] == te.item[pos_te])
    # train targets are strictly before the validation target of the same user
    tr = s.splits["train"]
    last_train = np.zeros(n_users + 1, dtype=np.int64)
    np.maximum.at(last_train, tr.user, tr.hist_end)
    assert np.all(last_train[va.user[pos_va]] < va.hist_end[pos_va])
    assert len(tr) == 2 * (100_000 - 3 * n_users)  # every interaction but first/valid/test, x2 for negatives


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


def test_history_is_strictly_before_target_and_left_padded(ml_samples):
    s = ml_samples
    b = s.make_batch(s.splits["train"], np.arange(4096), max_len=20)
    mask, hist_ts, ts = b["hist_mask"].numpy(), b["hist_ts"].numpy(), b["ts"].numpy()
    assert (hist_ts[mask] <= np.repeat(ts, mask.sum(1))).all()
    # left padding: once a row has a real behaviour, every later slot is real too
    assert (np.diff(mask.astype(int), axis=1) >= 0).all()
    assert (b["hist_item"].numpy()[~mask] == 0).all()
    # the most recent behaviour sits in the last slot and is the event just before the target
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
