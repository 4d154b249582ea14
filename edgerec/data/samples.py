"""Sample builders: turn an EventDataset into train/validation/test CTR samples.

One causal rule everywhere (`edgerec.features.definition.causal_end`): a behaviour enters a
sample's history only if its time is STRICTLY before the target's, exactly as serving cuts a
request's history. Clicks of the same second, request or basket are never history for each other.

Two protocols:
  * `dicycle` (dicycle.md section 5.3, leave-last-out by moment): per user, positive interactions
    sorted by time; a MOMENT is one distinct timestamp (an Instacart basket, the ratings of one
    second on ml-100k). The test positives are every interaction of the user's last moment, the
    validation positives every interaction of the moment before, the training positives every
    interaction of the earlier moments but the first (which has no history). So training never sees
    a label from an evaluation moment, and no line of a basket is preferred over another (the old
    "last line" was the last product added to the cart). `min_events` counts moments.
    Each positive gets one negative with the same timestamp and history (so neither can leak the
    label), drawn by the `negatives` sampler:
      - `own_history` (default): a positive whose item the user already had before (a repeat) gets
        a negative from his own earlier history that he did not take at that moment (drawn in
        proportion to how often it occurs there); a new-item positive gets a uniform item he never
        took. So "the candidate is somewhere in the user's history" holds for a pair's positive
        exactly when it holds for its negative. (Within the last L behaviours a model reads, the
        re-bought item is still more often present than its negative: recency is real signal.)
      - `uniform_unseen`: the literature's sampler, uniform among items the user never took (future
        ones included). With repeat purchases it gives the label away (a candidate from the history
        is always the positive); kept for comparison with published numbers.
    Both coincide on logs without repeats (ml-100k). Negatives are seeded; validation/test
    negatives are frozen, training negatives are fixed (`train_negatives: fixed`) or redrawn every
    epoch (`resample`).
  * `impression`: for logs with exposures (Open Bandit, o2o-sim) every exposure is a sample with
    its click label and display position; history = the user's clicks strictly before it; split by
    time (first 80% of the time span for training, next 10% validation, last 10% test by default).

Every split records per sample whether its pair's positive item (impression protocol: the
exposed item) was already in the user's history (`Split.repeat`), for the `:repeat` / `:new`
metric subsets (edgerec.train.metrics).

Memory: behaviour sequences are stored once, concatenated and sorted by (user, ts); a sample
stores only [hist_start, hist_end) into that store and `batches()` gathers the last L behaviours
(left-padded with 0) per batch, vectorized. Item and user ids are re-indexed to 1..V; 0 is
padding and V + 1 the out-of-vocabulary index (`FeatureSpec.oov_item`, `oov_user`) that serving
maps never-seen ids to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from edgerec.data.schema import EventDataset
from edgerec.errors import ConfigError, DataFormatError
from edgerec.features.definition import causal_ends, time_key
from edgerec.features.spec import FeatureSpec
from edgerec.features.time import local_clock, pack_slots


@dataclass
class Split:
    """One split's samples; every array has one entry per sample."""

    user: np.ndarray  # int64 user index (1..n_users)
    item: np.ndarray  # int64 target item index
    ts: np.ndarray  # int64 unix seconds of the target
    label: np.ndarray  # float32 0/1
    hist_start: np.ndarray  # int64: first behaviour of this user in the store
    hist_end: np.ndarray  # int64: one past the last behaviour before the target
    position: np.ndarray | None = None  # int64 1-based display position (impression protocol)
    event_row: np.ndarray | None = None  # int64 row of the sample in the dataset's events (impression protocol)
    # bool: dicycle protocol: the pair's POSITIVE item was in the user's history before ts (so a pair
    # is all-repeat or all-new); impression protocol: this exposure's own item had been clicked before
    repeat: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    def metric_subsets(self) -> dict[str, np.ndarray]:
        """Sample masks for the metric subsets (edgerec.train.metrics.SUBSETS; empty when not recorded)."""
        return {} if self.repeat is None else {"repeat": self.repeat, "new": ~self.repeat}

    def subset(self, idx: np.ndarray) -> "Split":
        return Split(**{k: (v[idx] if v is not None else None) for k, v in self.__dict__.items()})


@dataclass
class SampleSet:
    """Samples for all splits plus the shared behaviour store and feature encodings."""

    spec: FeatureSpec
    store_item: np.ndarray  # (S,) item index of each stored behaviour, sorted by (user, ts)
    store_ts: np.ndarray  # (S,) its timestamp
    splits: dict[str, Split]
    item_feats: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (spec.n_items,) codes
    user_feats: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (spec.n_users,) codes
    protocol: str = ""
    info: dict = field(default_factory=dict)
    _neg_sampler: "NegativeSampler | OwnHistorySampler | None" = None  # training negatives (resample)
    _eval_neg_sampler: "NegativeSampler | OwnHistorySampler | None" = None  # validation/test negatives
    _train_positive: Split | None = None
    resample_negatives: bool = False
    seed: int = 0
    store_slots: np.ndarray | None = None  # (S,) packed calendar slots of each stored behaviour
    item_ids: np.ndarray | None = None  # (n_items,) raw item_id of 1-based item index i at [i - 1]
    user_ids: np.ndarray | None = None  # (n_users,) raw user_id, likewise
    store_position: np.ndarray | None = None  # (S,) display position of each stored click (impression protocol)
    store_user: np.ndarray | None = None  # (S,) user index of each stored behaviour (sorted: the store's major key)
    id_maps: dict[str, pa.Table] | None = None  # imported dataset: id_map_user / id_map_item (the user's own ids)
    shuffle_groups: tuple[int, int] | None = None  # (rows_per_group, window): shuffle as out-of-core shards do

    def __post_init__(self) -> None:
        self.clock = local_clock(self.spec.tz)  # batches carry local wall-clock seconds (spec.tz)
        self.store_local_ts = self.clock.local(self.store_ts)  # (S,) once per dataset, gathered per batch
        if self.store_slots is None:
            self.store_slots = pack_slots(self.store_local_ts)  # (S,) calendar slots on the local clock

    def on_epoch_start(self, epoch: int) -> None:
        """Redraw training negatives when train_negatives = resample (dicycle protocol)."""
        if self.resample_negatives and epoch > 0 and self._train_positive is not None:
            rng = np.random.default_rng([self.seed, 7919, epoch])
            self.splits["train"] = _with_negatives(self._train_positive, self._neg_sampler, rng)

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
                max_len: int | None = None, rank: int = 0, world: int = 1,
                drop_short: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `batch_size` samples: global batches; with world > 1 this rank's slice of each
        (possibly empty, unless `drop_short` leaves out a last batch that is `too_short`)."""
        s = self.splits[split]
        if shuffle and self.shuffle_groups is not None:
            order = group_shuffle_order(len(s), *self.shuffle_groups, seed)
        else:
            order = np.random.default_rng(seed).permutation(len(s)) if shuffle else np.arange(len(s))
        for lo in range(0, len(s), batch_size):
            idx = order[lo: lo + batch_size]
            if world > 1:
                if drop_short and too_short(len(idx), world):
                    return
                idx = idx[rank_slice(len(idx), rank, world)]
            yield self.make_batch(s, idx, max_len)

    def make_batch(self, s: Split, idx: np.ndarray, max_len: int | None = None) -> dict[str, torch.Tensor]:
        return gather_batch(self, split_rows(s, idx), max_len or self.spec.max_len)


BATCH_FIELDS = ("user", "item", "ts", "label", "hist_start", "hist_end", "position")  # what a batch reads of a split


def split_rows(s: Split, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The rows `idx` of a split, as the columns `gather_batch` reads (position only when recorded)."""
    return {k: getattr(s, k)[idx] for k in BATCH_FIELDS if getattr(s, k) is not None}


def gather_batch(src, rows: dict[str, np.ndarray], L: int) -> dict[str, torch.Tensor]:
    """THE batch: each sample's last L behaviours before it (left-padded with 0), gathered from the
    behaviour store of `src` (a SampleSet in memory, or edgerec.data.shards.ShardedSamples over
    memory-mapped files: both have store_item, store_local_ts, store_slots, store_position,
    item_feats, user_feats and clock). `rows` holds the samples' BATCH_FIELDS columns."""
    end = rows["hist_end"]
    start = np.maximum(rows["hist_start"], end - L)
    pos = end[:, None] - L + np.arange(L)[None, :]  # (B, L), most recent behaviour last
    valid = pos >= start[:, None]
    pos = np.where(valid, pos, 0)

    def take(store: np.ndarray) -> np.ndarray:  # (B, L) int64 whatever the store's dtype (shards.store_dtypes)
        return np.where(valid, store[pos], 0).astype(np.int64, copy=False)

    hist_item = take(src.store_item)  # (B, L)
    hist_ts = take(src.store_local_ts)  # (B, L) local seconds
    item = rows["item"]
    user = rows["user"]
    batch = {
        "user": torch.from_numpy(user),
        "item": torch.from_numpy(item),
        "ts": torch.from_numpy(src.clock.local(rows["ts"])),  # (B,) local seconds (spec.tz)
        "hist_item": torch.from_numpy(hist_item),  # (B, L)
        "hist_ts": torch.from_numpy(hist_ts),  # (B, L)
        "hist_slots": torch.from_numpy(take(src.store_slots)),  # (B, L) packed slots
        "hist_mask": torch.from_numpy(valid),  # (B, L) True = real behaviour
        "label": torch.from_numpy(rows["label"]),
    }
    for name, codes in src.item_feats.items():
        batch[f"item_{name}"] = torch.from_numpy(codes[item])
        batch[f"hist_{name}"] = torch.from_numpy(np.where(valid, codes[hist_item], 0))
    for name, codes in src.user_feats.items():
        batch[f"user_{name}"] = torch.from_numpy(codes[user])
    if "position" in rows:
        batch["position"] = torch.from_numpy(rows["position"])
    if src.store_position is not None:  # where in the feed the user clicked before: examination habits
        batch["hist_position"] = torch.from_numpy(take(src.store_position))  # (B, L)
    return batch


def group_shuffle(n: int, rows_per_group: int, window: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The training order of out-of-core samples, one shuffle window at a time: the row groups of
    `rows_per_group` rows are permuted, then `window` groups at a time are read (in file order) and
    their rows permuted. Yields (groups, perm): the window is rows perm of the groups' rows laid end
    to end. Memory holds one window, never the split. The in-memory SampleSet follows the same order
    when `shuffle_groups` is set on it (the parity test), else it permutes the whole split."""
    rng = np.random.default_rng([seed, 271828])
    n_groups = -(-n // rows_per_group)
    groups = rng.permutation(n_groups)
    for w in range(0, n_groups, window):
        chosen = np.sort(groups[w: w + window])
        size = sum(len(_group_rows(g, rows_per_group, n)) for g in chosen)
        yield chosen, rng.permutation(size)


def _group_rows(g: int, rows_per_group: int, n: int) -> range:
    """The rows of row group g of a split of n rows (the last group may be short)."""
    return range(g * rows_per_group, min((g + 1) * rows_per_group, n))


def group_shuffle_order(n: int, rows_per_group: int, window: int, seed: int) -> np.ndarray:
    """group_shuffle's order as one array of row indices (in-memory samples; O(n) memory)."""
    parts = [np.concatenate([np.arange(r.start, r.stop) for r in (_group_rows(g, rows_per_group, n) for g in groups)])[perm]
             for groups, perm in group_shuffle(n, rows_per_group, window, seed)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def too_short(n: int, world: int) -> bool:
    """A last global batch of n rows that training under `world` ranks leaves out: every rank steps
    together and needs 2 rows (batch normalization fails on one)."""
    return n < 2 * world


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s part of a global batch of n rows (DistributedDataParallel: every rank reads the
    same global batches and gathers and trains on its slice, so N processes see the batches one does)."""
    return slice(rank * n // world, (rank + 1) * n // world)


# --------------------------------------------------------------------------------------------
# encoding helpers


def _index(values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """1-based index of each value in the sorted unique array `vocab` (all values must be present)."""
    return np.searchsorted(vocab, values).astype(np.int64) + 1


def _encode_side(table: pa.Table | None, key: str, vocab: np.ndarray, names: list[str],
                 kind: str, buckets: dict[str, int] | None = None,
                 fit_index: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Categorical side features as codes aligned with the 1-based entity index (0 = unknown; the
    OOV index, one past the last entity, also gets 0).

    A numeric attribute named in `buckets` (an imported dataset's `--bucket NAME=N`) is cut into N
    quantile buckets whose boundaries are fit on the entities of the training period only
    (`fit_index`: the 1-based indices of the training samples' items or users); a float attribute without a bucket count is refused, never cast
    to a category of its distinct values."""
    feats, sizes = {}, {}
    if not names:
        return feats, sizes
    if table is None:
        raise ConfigError(f"{kind}_features {names} requested but the dataset has no {kind} table.")
    buckets = buckets or {}
    for name in names:
        if name not in table.column_names:
            raise ConfigError(f"{kind}_features: unknown column {name!r}; available: "
                              f"{[c for c in table.column_names if c != key]}")
        keys = table.column(key).to_numpy()
        present = np.isin(keys, vocab)
        out = np.zeros(len(vocab) + 2, dtype=np.int64)  # padding, 1..V, OOV
        col = table.column(name)
        if name in buckets:
            values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN
            at = _index(keys[present], vocab)
            fit = np.isin(at, fit_index) if fit_index is not None else np.ones(len(at), bool)
            v = values[present]
            known = v[fit & np.isfinite(v)]
            if not len(known):
                raise ConfigError(f"{kind} attribute {name!r}: no value in the training period to fit its buckets")
            bounds = np.unique(np.quantile(known, np.linspace(0, 1, buckets[name] + 1)[1:-1]))  # (<= N-1,)
            out[at] = np.where(np.isfinite(v), np.searchsorted(bounds, v, side="right") + 1, 0)
            feats[name], sizes[name] = out, len(bounds) + 2
            continue
        if pa.types.is_floating(col.type):
            raise ConfigError(f"{kind} attribute {name!r} is numeric ({col.type}): bucket it at import "
                              f"(`edgerec data import ... --bucket {name}=8`) or leave it out of {kind}_features")
        col = pc.cast(col, pa.string()).to_numpy(zero_copy_only=False)
        cats, codes = np.unique(col.astype(str), return_inverse=True)
        out[_index(keys[present], vocab)] = codes[present] + 1
        feats[name], sizes[name] = out, len(cats) + 1
    return feats, sizes


NEGATIVE_SAMPLERS = ("own_history", "uniform_unseen")
_HISTORY_DRAWS = 64  # vectorized draws before the few left-over repeat positives are settled one by one


def lookup_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, position) of each key in a sorted unique array: THE vocabulary lookup (raw id -> its
    position, so index = position + 1) of the samples, serving and explain."""
    if not len(sorted_keys):
        return np.zeros(len(keys), bool), np.zeros(len(keys), np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys, at


def _pair_key(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """(user, item) -> one int64 key; items are 0..n_items + 1 (padding, real items, OOV)."""
    return np.asarray(user, dtype=np.int64) * (n_items + 2) + item


class NegativeSampler:
    """`uniform_unseen`: uniform negatives among items a user never took (vectorized rejection)."""

    def __init__(self, user: np.ndarray, item: np.ndarray, n_items: int, popularity: bool = False):
        self.n_items = n_items  # real items are 1..n_items
        self.seen = np.unique(_pair_key(user, item, n_items))  # (user, item) pairs ever taken
        # popularity = True: draw items in proportion to their interaction count (hard negatives that
        # remove the "popular vs random item" shortcut); items never interacted with are never drawn.
        counts = np.bincount(item, minlength=n_items + 1)[1:].astype(np.float64)
        self.p = counts / counts.sum() if popularity else None

    def _draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.p is None:
            return rng.integers(1, self.n_items + 1, n)
        return rng.choice(self.n_items, size=n, p=self.p) + 1

    def sample(self, pos: "Split", rng: np.random.Generator) -> np.ndarray:
        """(P,) a negative item for each positive of `pos`."""
        out = self._draw(len(pos), rng)
        for _ in range(1000):
            clash = lookup_sorted(self.seen, _pair_key(pos.user, out, self.n_items))[0]
            if not clash.any():
                return out
            out[clash] = self._draw(int(clash.sum()), rng)
        users = np.unique(pos.user[clash])
        raise NoNegativeLeft(f"could not draw a negative the user never took for {len(users)} user(s) (user index "
                             f"{', '.join(map(str, users[:5].tolist()))}): they took (almost) every one of the "
                             f"{self.n_items} items. Drop such users (an import's min_events does not; filter the "
                             "log), or use a dataset with a larger catalogue.")


class NoNegativeLeft(DataFormatError):
    """Some user took (almost) every item: no `uniform_unseen` negative exists for him."""


class OwnHistorySampler:
    """`own_history`: repeat positives get an item from the user's own earlier history that he did
    not take at that moment; new-item positives get a `uniform_unseen` negative (module docstring).

    The history item is drawn from the positive's [hist_start, hist_end) (strictly earlier
    behaviours), so in proportion to how often the user took it. Only when every earlier item was
    taken again at that moment does a repeat positive fall back to a uniform negative (the samples'
    info counts these: `negative_fallbacks`)."""

    def __init__(self, store_user: np.ndarray, store_item: np.ndarray, store_ts: np.ndarray,
                 uniform: NegativeSampler):
        self.uniform = uniform
        self.store_item = store_item
        self.n_items = uniform.n_items
        self.moments = np.unique(time_key(store_user, store_ts))  # sorted (user, ts) keys
        self.taken = np.unique(_pair_key(self._moment(store_user, store_ts), store_item, self.n_items))

    def _moment(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.moments, time_key(user, ts))

    def _taken_then(self, user: np.ndarray, ts: np.ndarray, item: np.ndarray) -> np.ndarray:
        """(Q,) the user took `item` at that very moment (the positive's own basket or request)."""
        return lookup_sorted(self.taken, _pair_key(self._moment(user, ts), item, self.n_items))[0]

    def sample(self, pos: "Split", rng: np.random.Generator) -> np.ndarray:
        try:
            out = self.uniform.sample(pos, rng)  # (P,) new-item positives keep these
            uniform_later = False
        except NoNegativeLeft:  # a user took every item: only the rows that need one get a uniform draw
            out, uniform_later = np.zeros(len(pos), dtype=np.int64), True
        todo = np.flatnonzero(pos.repeat & (pos.hist_end > pos.hist_start))
        for _ in range(_HISTORY_DRAWS):
            if not len(todo):
                break
            lo, n = pos.hist_start[todo], pos.hist_end[todo] - pos.hist_start[todo]
            cand = self.store_item[lo + (rng.random(len(todo)) * n).astype(np.int64)]  # (T,) a history item
            ok = ~self._taken_then(pos.user[todo], pos.ts[todo], cand)
            out[todo[ok]] = cand[ok]
            todo = todo[~ok]
        for j in todo:  # unlucky draws: choose among the eligible earlier behaviours explicitly
            hist = self.store_item[pos.hist_start[j]:pos.hist_end[j]]
            ok = hist[~self._taken_then(np.full(len(hist), pos.user[j]), np.full(len(hist), pos.ts[j]), hist)]
            if len(ok):
                out[j] = ok[rng.integers(len(ok))]
        if uniform_later:  # new-item positives and fallbacks; names the users if none exists for them
            need = np.flatnonzero(out == 0)
            if len(need):
                out[need] = self.uniform.sample(pos.subset(need), rng)
        return out


class _FirstTaken:
    """When each user first took each item, from the time-sorted store: repeat flags and fallbacks."""

    def __init__(self, store_user: np.ndarray, store_item: np.ndarray, store_ts: np.ndarray, n_items: int):
        self.n_items = n_items
        self.keys, first = np.unique(_pair_key(store_user, store_item, n_items), return_index=True)
        self.first_ts = store_ts[first]  # the store is time-sorted per user: first = earliest

    def before(self, user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(Q,) True where the user took `item` strictly before `ts`."""
        found, at = lookup_sorted(self.keys, _pair_key(user, item, self.n_items))
        return found & (self.first_ts[at] < ts)


def _with_negatives(pos: Split, sampler, rng: np.random.Generator) -> Split:
    neg_item = sampler.sample(pos, rng)
    n = len(pos)
    both = Split(
        user=np.concatenate([pos.user, pos.user]), item=np.concatenate([pos.item, neg_item]),
        ts=np.concatenate([pos.ts, pos.ts]),
        label=np.concatenate([np.ones(n, np.float32), np.zeros(n, np.float32)]),
        hist_start=np.concatenate([pos.hist_start, pos.hist_start]),
        hist_end=np.concatenate([pos.hist_end, pos.hist_end]),
        repeat=np.concatenate([pos.repeat, pos.repeat]),  # the pair's positive was a repeat
    )
    # interleave so each positive sits next to its negative (stable order, nice for debugging)
    order = np.arange(2 * n).reshape(2, n).T.ravel()
    return both.subset(order)


# --------------------------------------------------------------------------------------------
# protocols


def build_dicycle(ds: EventDataset, max_len: int = 50, seed: int = 0, min_events: int = 3,
                  item_features: list[str] | None = None, user_features: list[str] | None = None,
                  train_negatives: str = "fixed", eval_negatives: str = "uniform",
                  negatives: str = "own_history") -> SampleSet:
    """Leave-last-out CTR samples with 1 negative per positive (see module docstring).

    negatives: 'own_history' (default) or 'uniform_unseen' (the literature's sampler).
    eval_negatives: 'uniform' (the paper's protocol) or 'popularity' (validation/test negatives for
    new-item positives drawn in proportion to item popularity: a diagnostic that removes the
    popularity shortcut).
    """
    if train_negatives not in ("fixed", "resample"):
        raise ConfigError(f"train_negatives must be 'fixed' or 'resample', got {train_negatives!r}")
    if eval_negatives not in ("uniform", "popularity"):
        raise ConfigError(f"eval_negatives must be 'uniform' or 'popularity', got {eval_negatives!r}")
    if negatives not in NEGATIVE_SAMPLERS:
        raise ConfigError(f"data.negatives must be one of {', '.join(NEGATIVE_SAMPLERS)}, got {negatives!r}")
    if min_events < 3:
        raise ConfigError("data.min_events must be >= 3: a user needs a first moment (history only), a "
                          "validation and a test moment")
    e = ds.events.filter(pc.equal(ds.events.column("label"), 1))
    raw_user = e.column("user_id").to_numpy()
    raw_item = e.column("item_id").to_numpy()
    ts = e.column("ts").to_numpy()
    order = np.lexsort((np.arange(len(ts)), ts, raw_user))  # stable: ties keep file order
    raw_user, raw_item, ts = raw_user[order], raw_item[order], ts[order]
    # moments: a user's distinct timestamps; the split and min_events count them
    u_vals, u_inv = np.unique(raw_user, return_inverse=True)
    key = time_key(u_inv, ts)  # sorted
    new_moment = np.r_[True, key[1:] != key[:-1]]
    moments_per_user = np.bincount(u_inv, weights=new_moment).astype(np.int64)
    keep = (moments_per_user >= min_events)[u_inv]
    raw_user, raw_item, ts, key, new_moment = raw_user[keep], raw_item[keep], ts[keep], key[keep], new_moment[keep]

    user_vocab = np.unique(raw_user)
    item_vocab = np.unique(raw_item)
    if ds.items is not None:  # negatives may be any catalogue item, not only interacted ones
        item_vocab = np.union1d(item_vocab, ds.items.column("item_id").to_numpy())
    user = _index(raw_user, user_vocab)
    item = _index(raw_item, item_vocab)
    n_users, n_items = len(user_vocab), len(item_vocab)

    # the store: every positive, sorted by (user, ts); targets see it through the causal cut
    first = np.r_[True, user[1:] != user[:-1]]  # (S,) the user's first behaviour
    start = np.flatnonzero(first)[np.cumsum(first) - 1]  # (S,) where the user's behaviours begin
    hist_end = causal_ends(key, key)  # (S,) behaviours strictly before each one
    moment = np.cumsum(new_moment) - 1  # (S,) global moment id
    m_rank = moment - moment[start]  # (S,) 0 = the user's first moment
    n_moments = np.bincount(user, weights=new_moment, minlength=n_users + 1).astype(np.int64)[user]
    pos_split = np.full(len(user), "none", dtype=object)  # 'none': the first moment, history only
    pos_split[(m_rank >= 1) & (m_rank <= n_moments - 3)] = "train"
    pos_split[m_rank == n_moments - 2] = "valid"  # every line of the previous moment
    pos_split[m_rank == n_moments - 1] = "test"  # every line of the last moment (a whole basket)
    first_taken = _FirstTaken(user, item, ts, n_items)
    repeat = first_taken.before(user, item, ts)

    uniform = NegativeSampler(user, item, n_items)
    eval_uniform = NegativeSampler(user, item, n_items, popularity=eval_negatives == "popularity")
    if negatives == "own_history":
        sampler = OwnHistorySampler(user, item, ts, uniform)
        eval_sampler = OwnHistorySampler(user, item, ts, eval_uniform)
    else:
        sampler, eval_sampler = uniform, eval_uniform
    rng = np.random.default_rng([seed, 104729])
    splits, train_pos, fallbacks = {}, None, {}
    for name in ("train", "valid", "test"):
        m = pos_split == name
        positive = Split(user=user[m], item=item[m], ts=ts[m], label=np.ones(int(m.sum()), np.float32),
                         hist_start=start[m], hist_end=hist_end[m], repeat=repeat[m])
        if name == "train":
            train_pos = positive
        splits[name] = _with_negatives(positive, sampler if name == "train" else eval_sampler, rng)
        neg = splits[name].subset(np.flatnonzero(splits[name].label == 0))
        # repeat positives whose negative is not from the history (own_history: nothing eligible)
        fallbacks[name] = int((neg.repeat & ~first_taken.before(neg.user, neg.item, neg.ts)).sum())

    bk, tr = ds.meta.get("buckets") or {}, splits["train"]
    item_feats, item_sizes = _encode_side(ds.items, "item_id", item_vocab, list(item_features or []), "item", bk,
                                          np.unique(tr.item))
    user_feats, user_sizes = _encode_side(ds.users, "user_id", user_vocab, list(user_features or []), "user", bk,
                                          np.unique(tr.user))
    spec = FeatureSpec(n_users=n_users + 2, n_items=n_items + 2, max_len=max_len,
                       item_features=item_sizes, user_features=user_sizes, n_positions=0, tz=ds.tz)
    info = {"protocol": "dicycle", "negatives": negatives, "users": n_users, "items": n_items,
            "behaviours": len(item), "dropped_users_lt_min_events": int((moments_per_user < min_events).sum()),
            **{f"{k}_samples": len(v) for k, v in splits.items()},
            **{f"{k}_repeat_share": round(float(v.repeat.mean()), 4) if len(v) else None for k, v in splits.items()},
            **{f"{k}_negative_fallbacks": v for k, v in fallbacks.items()}}
    return SampleSet(spec, item, ts, splits, item_feats, user_feats, "dicycle", info,
                     _neg_sampler=sampler, _eval_neg_sampler=eval_sampler, _train_positive=train_pos,
                     resample_negatives=train_negatives == "resample", seed=seed,
                     item_ids=item_vocab, user_ids=user_vocab, store_user=user)


def build_impressions(ds: EventDataset, max_len: int = 50, split_fractions=(0.8, 0.1, 0.1),
                      item_features: list[str] | None = None, user_features: list[str] | None = None,
                      max_position: int | None = None, seed: int = 0, max_items: int | None = None) -> SampleSet:
    """Every exposure is a sample; history = the user's clicks strictly before it; split by time.
    max_items: keep only that many items' own indices (cap_items). The steps are the helpers below,
    which `edgerec batch --shards --engine spark` (edgerec.data.shards_spark) calls too."""
    e = ds.events
    if e.column("position").null_count == e.num_rows:
        raise ConfigError(no_positions_message(ds.name))
    check_split_fractions(split_fractions)
    raw_user = e.column("user_id").to_numpy()
    raw_item = e.column("item_id").to_numpy()
    ts = e.column("ts").to_numpy()
    label = e.column("label").to_numpy().astype(np.float32)
    position = pc.fill_null(e.column("position"), 0).to_numpy().astype(np.int64)
    user_vocab, item_vocab = np.unique(raw_user), np.unique(raw_item)
    if ds.items is not None:
        item_vocab = np.union1d(item_vocab, ds.items.column("item_id").to_numpy())
    user, item = _index(raw_user, user_vocab), _index(raw_item, item_vocab)
    t1, t2 = time_cuts(ts.min(), ts.max(), split_fractions)
    c_order, hist_start, hist_end, repeat = click_history(user, item, ts, label, np.arange(len(ts)), len(item_vocab))
    s_user, s_item, s_ts = user[c_order], item[c_order], ts[c_order]
    cap_info = {}
    if max_items is not None and max_items < len(item_vocab):
        item_vocab, item, s_item, cap_info = cap_items(item_vocab, item, s_item, ts < t1, max_items)
    which = split_of(ts, t1, t2)
    n_pos = int(max_position or position.max())
    position = np.minimum(position, n_pos)
    splits = {}
    for i, name in enumerate(("train", "valid", "test")):
        m = np.flatnonzero(which == i)
        splits[name] = Split(user=user[m], item=item[m], ts=ts[m], label=label[m],
                             hist_start=hist_start[m], hist_end=hist_end[m], position=position[m],
                             event_row=m.astype(np.int64), repeat=repeat[m])
    spec, item_feats, user_feats = impression_spec(ds, item_vocab, user_vocab, np.unique(splits["train"].item),
                                                   np.unique(splits["train"].user), item_features, user_features,
                                                   max_len, n_pos)
    info = impression_info(len(user_vocab), len(item_vocab), t1, t2, cap_info,
                           {k: (len(v), float(v.label.sum(dtype=np.float64))) for k, v in splits.items()})
    return SampleSet(spec, s_item, s_ts, splits, item_feats, user_feats, "impression", info, seed=seed,
                     item_ids=item_vocab, user_ids=user_vocab, store_position=position[c_order], store_user=s_user)


def no_positions_message(name: str) -> str:
    return f"dataset {name!r} has no display positions; use protocol 'dicycle'."


def check_split_fractions(split_fractions) -> None:
    if len(split_fractions) != 3 or abs(sum(split_fractions) - 1) > 1e-6 or min(split_fractions) <= 0:
        raise ConfigError(f"split_fractions must be 3 positive numbers summing to 1, got {split_fractions}")


def time_cuts(lo, hi, split_fractions) -> tuple:
    """(t1, t2): training is ts < t1, validation t1 <= ts < t2, test the rest (fractions of the time span)."""
    return lo + (hi - lo) * split_fractions[0], lo + (hi - lo) * (split_fractions[0] + split_fractions[1])


def split_of(ts: np.ndarray, t1, t2) -> np.ndarray:
    """(N,) 0 train, 1 valid, 2 test."""
    return np.where(ts < t1, 0, np.where(ts < t2, 1, 2))


def click_history(user: np.ndarray, item: np.ndarray, ts: np.ndarray, label: np.ndarray, row: np.ndarray,
                  n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The behaviour store of an exposure log and each exposure's pointers into it: the clicks sorted
    by (user, ts, row) are the store (`c_order`: their positions in the input); an exposure's history
    is [hist_start, hist_end), its user's clicks strictly before its second; `repeat`: its item was
    clicked by the user before. Works on the whole log or on any set of whole users (Spark's
    partitions), the pointers then being into that set's own store."""
    clicks = np.flatnonzero(label == 1)
    c_order = clicks[np.lexsort((row[clicks], ts[clicks], user[clicks]))]
    s_user, s_item, s_ts = user[c_order], item[c_order], ts[c_order]
    store_key = time_key(s_user, s_ts)
    hist_end = causal_ends(store_key, time_key(user, ts))  # strictly earlier clicks
    hist_start = np.searchsorted(store_key, time_key(user, 0), side="left")
    repeat = _FirstTaken(s_user, s_item, s_ts, n_items).before(user, item, ts)  # clicked it before (own ids)
    return c_order, hist_start, hist_end, repeat


def impression_spec(ds: EventDataset, item_vocab: np.ndarray, user_vocab: np.ndarray, train_items: np.ndarray,
                    train_users: np.ndarray, item_features, user_features, max_len: int,
                    n_pos: int) -> tuple[FeatureSpec, dict, dict]:
    """The feature spec and side-feature codes of impression samples (train_*: the 1-based indices
    the training split uses, which fit numeric buckets)."""
    bk = ds.meta.get("buckets") or {}
    item_feats, item_sizes = _encode_side(ds.items, "item_id", item_vocab, list(item_features or []), "item", bk,
                                          train_items)
    user_feats, user_sizes = _encode_side(ds.users, "user_id", user_vocab, list(user_features or []), "user", bk,
                                          train_users)
    spec = FeatureSpec(n_users=len(user_vocab) + 2, n_items=len(item_vocab) + 2, max_len=max_len,
                       item_features=item_sizes, user_features=user_sizes, n_positions=n_pos + 1,
                       tz=ds.tz)
    return spec, item_feats, user_feats


def impression_info(n_users: int, n_items: int, t1, t2, cap_info: dict, per_split: dict) -> dict:
    """SampleSet.info of the impression protocol; per_split: name -> (samples, clicks)."""
    return {"protocol": "impression", "users": n_users, "items": n_items,
            "split_time_cuts": [float(t1), float(t2)], **cap_info,
            **{f"{k}_samples": n for k, (n, _) in per_split.items()},
            **{f"{k}_ctr": round(c / n, 5) if n else None for k, (n, c) in per_split.items()}}


def cap_items(vocab: np.ndarray, item: np.ndarray, store_item: np.ndarray, train: np.ndarray,
              max_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Frequency-capped item ids: the `max_items` items exposed most often in the training period
    (`train`: a mask over the samples; ties to the smaller index; never one it did not expose) keep
    an index, every other item maps to the out-of-vocabulary index that serving uses for an item it
    never saw. Why: a catalogue of millions would otherwise need a dense row per id, most of them for
    items seen a handful of times. Counting on the training period only keeps validation and test
    out of the choice. The tail then trains the OOV row as one shared "rare item" vector (without a
    cap training never sees that row, and it stays zero), which unseen items at serving get too;
    the tail's side features are lost with its index (code 0). COUPA's same-item kernel never
    fires on the OOV index. Returns the new vocabulary, the re-indexed samples and store, and the
    share of samples and stored clicks that fell into the shared index (the "collision rate")."""
    counts = np.bincount(item[train], minlength=len(vocab) + 1)[1:]  # (V,) training exposures per item
    keep, remap = cap_remap(counts, max_items)
    new_item, new_store = remap[item], remap[store_item]
    k = len(keep)
    info = cap_info(len(vocab), max_items, k, int((new_item == k + 1).sum()), len(item),
                    int((new_store == k + 1).sum()), len(store_item))
    return vocab[keep], new_item, new_store, info


def cap_remap(counts: np.ndarray, max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """counts (V,) training exposures of items 1..V -> (keep (K,) 0-based positions of the kept items,
    remap (V + 2,) old index -> new index, every dropped item to the new OOV K + 1)."""
    keep = np.argsort(-counts, kind="stable")[:max_items]  # 0-based positions of the most exposed
    keep = np.sort(keep[counts[keep] > 0])  # (K,) never an item the training period did not show
    k = len(keep)
    remap = np.full(len(counts) + 2, k + 1, np.int64)  # padding, 1..V, old OOV -> new OOV k + 1
    remap[0] = 0
    remap[keep + 1] = np.arange(1, k + 1)
    return keep, remap


def cap_info(items_before: int, max_items: int, kept: int, capped_samples: int, samples: int,
             capped_history: int, history: int) -> dict:
    return {"items_before_cap": items_before, "item_cap": max_items, "items_kept": kept,
            "capped_sample_share": round(capped_samples / samples, 5) if samples else 0.0,
            "capped_history_share": round(capped_history / history, 5) if history else 0.0}


PROTOCOLS = {"dicycle": build_dicycle, "impression": build_impressions}
