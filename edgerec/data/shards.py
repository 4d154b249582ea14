"""Out-of-core samples: a SampleSet written as Parquet shards plus a memory-mapped behaviour store.

Why: the in-memory SampleSet holds every sample of every split (about 60 bytes each) and the whole
behaviour store, so a log of 20M exposures needs gigabytes before the first batch. Out of core,
training holds one shuffle window of sample rows and the pages of the store a batch touches; peak
memory depends on the batch, the window and the model, not on the log (bench/scale.py measures it).

A shard folder (written atomically: a temp folder renamed into place):

  manifest.json          format, feature spec, protocol, info, the data settings it was built with,
                         rows per group, rows per split
  train.parquet, valid.parquet, test.parquet
                         one row per sample (Split's columns: user, item, ts, label, hist_start,
                         hist_end, position, repeat, event_row), in row groups of `rows_per_group`
  store_item.npy, store_local_ts.npy, store_slots.npy[, store_position.npy]
                         the behaviour store, sorted by (user, ts); samples point into it with
                         [hist_start, hist_end), exactly as in memory (in narrower dtypes:
                         `store_dtypes`; folders written before them, all int64, read the same)
  item_ids.npy, user_ids.npy, item_feat_*.npy, user_feat_*.npy, id_map_*.parquet
                         vocabularies and side-feature codes (size of the catalogue, kept in memory)

`ShardedSamples` reads it with the interface the Trainer uses (`splits`, `batches`, `spec`), and
batches come from the same `gather_batch` as in memory, so the tensors are identical. Shuffling is
by row group and window (`samples.group_shuffle`); an in-memory SampleSet with `shuffle_groups`
set gives the same batches for the same seed (tests/test_scale.py).

`edgerec batch --shards` writes this folder from the same sample builders training uses; `train`
reads it with `--set data.shards=DIR`, or builds one itself with `data.out_of_core: true`.
"""

from __future__ import annotations

import glob
import json
import mmap
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: abandoned temp folders are not detected
    fcntl = None

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from edgerec.data.samples import BATCH_FIELDS, SampleSet, Split, gather_batch, group_shuffle, rank_slice, too_short
from edgerec.errors import ConfigError, EdgerecError
from edgerec.features.definition import cut
from edgerec.features.spec import FeatureSpec
from edgerec.features.time import local_clock

FORMAT = 1
SPLITS = ("train", "valid", "test")
STORE = ("store_item", "store_local_ts", "store_slots", "store_position")
RELEASE_EVERY = 64  # batches between releases of the store's mapped pages (they stay in the page cache)


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere a no-op).
    Why: each batch allocates and frees a few MB of numpy temporaries of varying sizes; glibc keeps
    the freed pages in its heap, so resident memory crept up with the steps of an epoch. Trimming
    every RELEASE_EVERY batches returns them; docs/results.md ("Scale-out") has the one-off phase
    measurements behind this, and why MALLOC_MMAP_THRESHOLD_ (which flattened memory too, at half
    the training speed) was not used."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def store_dtypes(spec: FeatureSpec) -> dict[str, type]:
    """The behaviour store's dtypes on disk: the narrowest that hold the spec's indices (items below
    spec.n_items, positions below spec.n_positions, 17-bit packed slots; local seconds stay int64).
    Why: a batch of 2,048 random users touches most pages of the store, so its size is resident
    memory; at 18M events four int64 columns were 82 MB, these are 18 bytes a click instead of 32.
    `gather_batch` widens what it gathers to int64, so the batches are the in-memory ones."""
    return {"store_item": np.int32 if spec.n_items <= np.iinfo(np.int32).max else np.int64,
            "store_local_ts": np.int64,
            "store_slots": np.int32,
            "store_position": np.int16 if spec.n_positions <= np.iinfo(np.int16).max else np.int32}


def write_shards(samples: SampleSet, out: str | Path, data: dict, rows_per_group: int = 65536,
                 dataset_meta: str | None = None) -> Path:
    """Write `samples` as a shard folder at `out` (replacing a shard folder that is there: the new
    one is complete before the old one is moved away). `data` records the settings the samples were
    built with (`data_settings`): training checks them against its config before it reads a row;
    `dataset_meta` the prepared dataset's fingerprint (`dataset_fingerprint`), so shards of an
    earlier import are caught."""
    if samples.resample_negatives:  # the config check (train.config) says this first, naming the experiment
        raise ConfigError("out-of-core samples keep their training negatives fixed; data.train_negatives=resample "
                          "redraws them in memory every epoch (use data.train_negatives=fixed).")
    with shard_folder(out) as tmp:
        rows = {}
        for name in SPLITS:
            s = samples.splits[name]
            cols = {f.name: getattr(s, f.name) for f in fields(Split) if getattr(s, f.name) is not None}
            pq.write_table(pa.table(cols), tmp / f"{name}.parquet", row_group_size=rows_per_group)
            rows[name] = len(s)
        dtypes = store_dtypes(samples.spec)
        for name in STORE:
            arr = getattr(samples, name)
            if arr is not None:
                if len(arr) and not np.can_cast(arr.dtype, dtypes[name]) and arr.max() > np.iinfo(dtypes[name]).max:
                    raise EdgerecError(f"{name}: a value {arr.max()} does not fit {np.dtype(dtypes[name])} (spec: "
                                       f"{samples.spec.n_items} items, {samples.spec.n_positions} positions); "
                                       f"please report this")
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr, dtype=dtypes[name]))
        write_vocabularies(tmp, samples.item_ids, samples.user_ids, samples.item_feats, samples.user_feats,
                           samples.id_maps)
        write_manifest(tmp, samples.spec, samples.protocol, samples.info, data, dataset_meta, rows_per_group, rows,
                       len(samples.store_item), samples.seed, list(samples.item_feats), list(samples.user_feats))
    return Path(out)


@contextmanager
def shard_folder(out: str | Path) -> Iterator[Path]:
    """A temp folder beside `out` to write a shard folder into; on success it replaces `out` (the new
    folder is complete before the old one is moved away), on any failure it is removed. While it is
    written its writer holds a lock on a file beside it (`_locked_temp_folder`), so a process that
    was killed (SIGKILL, the OOM killer: its `except` never ran) leaves a folder the next write of
    `out` can tell from one still being written, and removes."""
    out = Path(out)
    if out.exists() and not (out / "manifest.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise EdgerecError(f"{out}: exists and is not a shard folder; it would be replaced. Choose another folder "
                           f"or remove it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temp_folders(out)
    with _locked_temp_folder(out) as tmp:
        try:
            yield tmp
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                out.rename(old)
                tmp.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def _locked_temp_folder(out: Path) -> Iterator[Path]:
    """.NAME.tmp-TOKEN (the folder) and .NAME.tmp-TOKEN.lock (flock-ed by this process until the
    folder is renamed or removed). The kernel drops the lock when its process dies, whatever the
    signal, on this host or, over NFS, on another; a PID in the name could not say that across
    containers."""
    token = secrets.token_hex(6)
    lock = out.parent / f".{out.name}.tmp-{token}.lock"
    with open(lock, "w") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        tmp = out.parent / f".{out.name}.tmp-{token}"
        tmp.mkdir(mode=0o755)
        try:
            yield tmp
        finally:
            lock.unlink(missing_ok=True)


def remove_abandoned_temp_folders(out: Path) -> list[Path]:
    """Remove the temp folders of `out` whose writer is gone: their lock file is not held any more.
    A folder being written (its lock held) is kept; without flock (not POSIX) nothing is removed."""
    removed = []
    if fcntl is None:
        return removed
    for lock in out.parent.glob(f"{glob.escape(f'.{out.name}.tmp-')}*.lock"):
        try:
            with open(lock, "r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live writer; raises, kept
                tmp = lock.with_suffix("")
                shutil.rmtree(tmp, ignore_errors=True)
                lock.unlink(missing_ok=True)
                if not tmp.exists():
                    removed.append(tmp)
        except OSError:
            continue
    return removed


def stale_shards(root: Path, keep: Path) -> list[tuple[Path, float]]:
    """The shard folders under `root` (output_dir/_shards) built from another prepare or import of
    their dataset than the one in this data folder, with their size in MiB: data.out_of_core never
    reuses them (the digest in their name includes the dataset's meta.json). Reported, not removed:
    another host or user sharing output_dir with its own data folder may be training on them."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p != keep and not p.name.startswith(".")
                         and (p / "manifest.json").is_file()):
        try:
            m = json.loads((folder / "manifest.json").read_text())
            now = dataset_fingerprint(m["data"]["dataset"], prepare=False)
        except (OSError, ValueError, KeyError, TypeError, EdgerecError):
            continue  # not ours to judge
        if now is not None and m.get("dataset_meta") not in (None, now):
            out.append((folder, sum(f.stat().st_size for f in folder.iterdir()) / 2**20))
    return out


def write_vocabularies(tmp: Path, item_ids: np.ndarray, user_ids: np.ndarray, item_feats: dict, user_feats: dict,
                       id_maps: dict | None) -> None:
    """The catalogue-sized files: raw ids of each index, side-feature codes, an import's id maps."""
    np.save(tmp / "item_ids.npy", item_ids)
    np.save(tmp / "user_ids.npy", user_ids)
    for kind, feats in (("item", item_feats), ("user", user_feats)):
        for fname, codes in feats.items():
            np.save(tmp / f"{kind}_feat_{fname}.npy", codes)
    for mname, table in (id_maps or {}).items():
        pq.write_table(table, tmp / f"{mname}.parquet")


def write_manifest(tmp: Path, spec: FeatureSpec, protocol: str, info: dict, data: dict, dataset_meta: str | None,
                   rows_per_group: int, rows: dict, store_rows: int, seed: int, item_features: list,
                   user_features: list) -> None:
    manifest = {"format": FORMAT, "spec": spec.to_dict(), "protocol": protocol, "info": info, "data": data,
                "dataset_meta": dataset_meta, "rows_per_group": rows_per_group, "rows": rows,
                "store_rows": store_rows, "seed": seed, "item_features": item_features,
                "user_features": user_features}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=_plain))


def _plain(x):
    return x.item() if isinstance(x, np.generic) else str(x)


def folder_differences(a: str | Path, b: str | Path) -> list[str]:
    """What differs between two shard folders (empty: the same samples, row groups, store and
    vocabularies). Why: a Spark job's folder must train exactly like the local builders' one, and
    this is how tests/test_scale.py and bench/scale.py check it. Reads the tables one row group at
    a time; the store arrays are memory-mapped, compared whole."""
    a, b = Path(a), Path(b)
    names_a, names_b = sorted(p.name for p in a.iterdir()), sorted(p.name for p in b.iterdir())
    if names_a != names_b:
        return [f"files: {sorted(set(names_a) ^ set(names_b))}"]
    out = []
    if json.loads((a / "manifest.json").read_text()) != json.loads((b / "manifest.json").read_text()):
        out.append("manifest.json")
    for name in (n for n in names_a if n.endswith(".parquet")):
        fa, fb = pq.ParquetFile(a / name), pq.ParquetFile(b / name)
        groups_a = [fa.metadata.row_group(i).num_rows for i in range(fa.metadata.num_row_groups)]
        groups_b = [fb.metadata.row_group(i).num_rows for i in range(fb.metadata.num_row_groups)]
        if fa.schema_arrow != fb.schema_arrow or groups_a != groups_b:
            out.append(f"{name}: schema or row groups")
        elif not all(fa.read_row_group(i).equals(fb.read_row_group(i)) for i in range(len(groups_a))):
            out.append(f"{name}: rows")
    for name in (n for n in names_a if n.endswith(".npy")):
        x, y = np.load(a / name, mmap_mode="r"), np.load(b / name, mmap_mode="r")
        if x.dtype != y.dtype or not np.array_equal(x, y):
            out.append(name)
    return out


class ShardSplit:
    """One split on disk: its length, its row groups, and its metric subsets (one bool per sample)."""

    def __init__(self, path: Path, rows: int):
        self.path = path
        self.rows = rows
        self.file = pq.ParquetFile(path)
        if self.file.metadata.num_rows != rows:
            raise ValueError(f"{path.name} holds {self.file.metadata.num_rows:,} rows, manifest.json says {rows:,}")
        self.columns = [c for c in self.file.schema_arrow.names if c in BATCH_FIELDS]

    def __len__(self) -> int:
        return self.rows

    def read_groups(self, groups) -> dict[str, np.ndarray]:
        t = self.file.read_row_groups(list(map(int, groups)), columns=self.columns)
        return {c: t.column(c).to_numpy().copy() for c in self.columns}  # writable: torch.from_numpy wants it

    def metric_subsets(self) -> dict[str, np.ndarray]:
        if "repeat" not in self.file.schema_arrow.names:
            return {}
        repeat = self.file.read(columns=["repeat"]).column("repeat").to_numpy()
        return {"repeat": repeat, "new": ~repeat}


class ShardedSamples:
    """A shard folder with the SampleSet interface the Trainer, predict and evaluate use."""

    def __init__(self, path: str | Path, window: int = 8):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.is_file():
            raise EdgerecError(f"{self.path}: not a shard folder (no manifest.json); write one with "
                               f"`edgerec batch --shards CONFIG:EXPID --out DIR` (it goes to DIR/shards).")
        try:
            m = json.loads(mf.read_text())
        except ValueError as e:
            raise EdgerecError(f"{mf}: not valid JSON ({e}); write the shards again.") from None
        if m.get("format") != FORMAT:
            raise EdgerecError(f"{mf}: shard format {m.get('format')!r}, this edgerec reads {FORMAT}; write the "
                               f"shards again with this version.")
        try:
            self._open(m, window)
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else cut(str(e), 160)
            raise EdgerecError(f"{self.path}: damaged shard folder ({what}); write the shards again "
                               f"(`edgerec batch --shards CONFIG:EXPID`).") from None

    def _open(self, m: dict, window: int) -> None:
        self.manifest = m
        self.spec = FeatureSpec.from_dict(m["spec"])
        self.protocol, self.info, self.seed = m["protocol"], m["info"], m["seed"]
        self.rows_per_group = int(m["rows_per_group"])
        self.shuffle_groups = (self.rows_per_group, window)
        self.clock = local_clock(self.spec.tz)
        self.resample_negatives = False
        for name in STORE:  # memory-mapped: a batch touches only the pages of its users' histories
            f = self.path / f"{name}.npy"
            optional = name == "store_position"  # only the impression protocol records positions
            arr = np.load(f, mmap_mode="r") if (f.exists() or not optional) else None
            if arr is not None and len(arr) != m["store_rows"]:
                raise ValueError(f"{f.name} holds {len(arr):,} rows, manifest.json says {m['store_rows']:,}")
            setattr(self, name, arr)
        self.item_ids = np.load(self.path / "item_ids.npy")
        self.user_ids = np.load(self.path / "user_ids.npy")
        self.item_feats = {n: np.load(self.path / f"item_feat_{n}.npy") for n in m["item_features"]}
        self.user_feats = {n: np.load(self.path / f"user_feat_{n}.npy") for n in m["user_features"]}
        maps = {p.stem: pq.read_table(p) for p in sorted(self.path.glob("id_map_*.parquet"))}
        self.id_maps = maps or None
        self.splits = {n: ShardSplit(self.path / f"{n}.parquet", int(m["rows"][n])) for n in SPLITS}

    def check_data(self, data: dict, where: str, dataset_meta: str | None = None) -> None:
        """The shards were built with the data settings of the config that trains on them, and from
        the dataset as it is prepared here (when it is: shards may travel to a machine without it)."""
        built_from = self.manifest.get("dataset_meta")
        if dataset_meta and built_from and dataset_meta != built_from:
            raise ConfigError(f"{where}: data.shards={self.path} was built from another preparation or import of "
                              f"{data.get('dataset')} than the one here; write the shards again.")
        built = self.manifest["data"]
        diff = [k for k in sorted(set(built) | set(data)) if built.get(k) != data.get(k)]
        if diff:
            said = "; ".join(f"{k}: shards {built.get(k)!r}, config {data.get(k)!r}" for k in diff)
            raise ConfigError(f"{where}: data.shards={self.path} was built with other data settings ({said}); "
                              f"write the shards again with these settings, or train with the shards' settings.")

    def on_epoch_start(self, epoch: int) -> None:
        """Training negatives are fixed out of core (write_shards refuses resample)."""

    def _release(self) -> None:
        """Drop the store's mapped pages from this process (MADV_DONTNEED): they stay in the page
        cache, so the next touch is a minor fault, and resident memory stays at what recent batches used."""
        for name in STORE:
            arr = getattr(self, name)
            mm = getattr(arr, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED)
        trim_heap()

    def _chunks(self, split: str, shuffle: bool, seed: int) -> Iterator[dict[str, np.ndarray]]:
        s = self.splits[split]
        n_groups = s.file.num_row_groups
        if not shuffle:
            for g in range(n_groups):
                yield s.read_groups([g])
            return
        for groups, perm in group_shuffle(len(s), self.rows_per_group, self.shuffle_groups[1], seed):
            rows = s.read_groups(groups)
            yield {k: v[perm] for k, v in rows.items()}

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
                max_len: int | None = None, rank: int = 0, world: int = 1,
                drop_short: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """The same batches as SampleSet.batches with shuffle_groups set, read window by window."""
        L = max_len or self.spec.max_len
        carry: dict[str, np.ndarray] | None = None
        n_batches = 0
        for chunk in self._chunks(split, shuffle, seed):
            if carry is not None:
                chunk = {k: np.concatenate([carry[k], chunk[k]]) for k in chunk}
            n = len(chunk["label"])
            full = n - n % batch_size
            for lo in range(0, full, batch_size):
                yield self._batch(chunk, slice(lo, lo + batch_size), L, rank, world)
                n_batches += 1
                if n_batches % RELEASE_EVERY == 0:
                    self._release()
            carry = {k: v[full:] for k, v in chunk.items()}
        if carry is not None and len(carry["label"]):
            if world > 1 and drop_short and too_short(len(carry["label"]), world):
                return
            yield self._batch(carry, slice(0, len(carry["label"])), L, rank, world)
        self._release()

    def _batch(self, chunk: dict[str, np.ndarray], at: slice, L: int, rank: int, world: int) -> dict:
        rows = {k: v[at] for k, v in chunk.items()}
        if world > 1:
            part = rank_slice(len(rows["label"]), rank, world)
            rows = {k: v[part] for k, v in rows.items()}
        return gather_batch(self, rows, L)


def dataset_fingerprint(dataset_id: str, prepare: bool = True) -> str | None:
    """The prepared dataset's meta.json digest (every prepare or import rewrites it): what shards were
    built from, without reading the log. prepare=False: None when it is not prepared here."""
    from edgerec.data import registry
    from edgerec.io import sha256_file

    if prepare:
        folder = registry.prepare(dataset_id)
    else:
        folder = registry.data_dir() / registry.parse_id(dataset_id)[2]
    meta = folder / "meta.json"
    return sha256_file(meta)[:16] if meta.is_file() else None


def data_settings(cfg) -> dict:
    """What in an experiment config changes its samples (not max_len: histories are cut per batch)."""
    d = asdict(cfg.data)
    for k in ("max_len", "out_of_core", "shards", "rows_per_group", "shuffle_window"):
        d.pop(k, None)
    out = {"dataset": cfg.dataset, "protocol": cfg.protocol}
    if cfg.protocol != "dicycle":  # impression samples do not depend on the seed; dicycle's negatives do
        for k in ("train_negatives", "eval_negatives", "negatives", "min_events"):
            d.pop(k, None)
    else:
        out["seed"] = cfg.train.seed
        for k in ("split_fractions", "max_position", "max_items"):
            d.pop(k, None)
    return {**out, **d}
