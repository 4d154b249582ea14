"""One experiment run, end to end: config -> samples -> model -> fit -> test -> checkpoint -> ledger."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from edgerec.data import registry
from edgerec.data.samples import PROTOCOLS, SampleSet
from edgerec.errors import ConfigError, EdgerecError
from edgerec.features.definition import cut
from edgerec.features.spec import FeatureSpec
from edgerec.io import check_writable
from edgerec.models import MODELS, CTRModel
from edgerec.train import distributed
from edgerec.train.config import ExperimentConfig, experiment_from_dict
from edgerec.train.ledger import append_run, machine_info
from edgerec.train.trainer import (RETRAIN, WEIGHTS, Trainer, check_fits, check_precision, evaluate_split, load_state,
                                   resolve_device, save_checkpoint, seed_everything)


@dataclass
class RunResult:
    expid: str
    model: str
    dataset: str
    seed: int
    valid: dict
    test: dict
    best_epoch: int
    epochs_run: int
    train_seconds: float
    wall_seconds: float
    run_dir: str
    config_hash: str
    trained: CTRModel | None = field(default=None, repr=False)  # the model at its best epoch, in memory
    sample_set: SampleSet | None = field(default=None, repr=False)


def build_samples(cfg: ExperimentConfig) -> SampleSet:
    ds = registry.load(cfg.dataset)
    d = cfg.data
    common = dict(max_len=d.max_len, item_features=d.item_features, user_features=d.user_features,
                  seed=cfg.train.seed)
    if cfg.protocol == "dicycle":
        samples = PROTOCOLS["dicycle"](ds, min_events=d.min_events, train_negatives=d.train_negatives,
                                       eval_negatives=d.eval_negatives, negatives=d.negatives, **common)
    else:
        samples = PROTOCOLS["impression"](ds, split_fractions=tuple(d.split_fractions), max_position=d.max_position,
                                          max_items=d.max_items, **common)
    maps = {k: ds.extras[k] for k in ID_MAPS if k in ds.extras}
    samples.id_maps = maps or None
    return samples


ID_MAPS = ("id_map_user", "id_map_item")  # an imported dataset's ids (edgerec.data.imports); copied into each run


def save_id_maps(run_dir: Path, samples: SampleSet) -> None:
    """The run keeps the id mapping it was trained with, so serving and explanations can check they
    speak the same ids (a re-import that renumbered them is caught at load)."""
    import pyarrow.parquet as pq

    from edgerec.io import atomic_path

    for name, table in (samples.id_maps or {}).items():
        with atomic_path(run_dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)


def check_id_maps(run_dir: Path, samples: SampleSet) -> None:
    import pyarrow.parquet as pq

    for name in ID_MAPS:
        path = run_dir / f"{name}.parquet"
        if path.exists():
            mine = pq.read_table(path)
            now = (samples.id_maps or {}).get(name)
            if now is None or not now.equals(mine):
                raise EdgerecError(f"{run_dir}: its dataset was re-imported with other ids since training ({name} "
                                   "differs), so its indices would name other users or items; retrain it with "
                                   "`edgerec train`.")


def build_model(cfg: ExperimentConfig, spec: FeatureSpec) -> CTRModel:
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # same init for the same seed
    return new_model(cfg, spec)


def new_model(cfg: ExperimentConfig, spec: FeatureSpec, where: str | None = None) -> CTRModel:
    """The model of `cfg`; a constructor's own check (COUPA refuses some argument combinations) comes
    back as a ConfigError naming the experiment, not a ValueError traceback."""
    try:
        return MODELS[cfg.model](spec, **cfg.model_args)
    except ValueError as e:
        raise ConfigError(f"{where or cfg.expid}: model_args of {cfg.model}: {e}") from None


def check_before_work(cfg: ExperimentConfig, write_ledger: bool = True) -> None:
    """What would otherwise fail after the work: a train.device this machine lacks (it failed at the
    first batch), bf16 on hardware without it, and an unwritable output_dir or ledger (they failed after
    training had finished)."""
    check_precision(cfg.train.precision, resolve_device(cfg.train.device), cfg.expid)
    check_writable(cfg.output_dir, f"{cfg.expid}: output_dir (--set output_dir=DIR)", folder=True)
    if write_ledger:
        check_writable(cfg.ledger, f"{cfg.expid}: ledger (--set ledger=FILE)")


def _samples_key(cfg: ExperimentConfig) -> tuple:
    return (cfg.dataset, cfg.protocol, repr(cfg.data), cfg.train.seed)


def _cached_samples(cfg: ExperimentConfig, sample_cache: dict | None) -> SampleSet:
    """build_samples, reused from `sample_cache` when an earlier run had the same data and seed."""
    key = _samples_key(cfg)
    if sample_cache is not None and key in sample_cache:
        return sample_cache[key]
    samples = build_samples(cfg)
    if sample_cache is not None:
        sample_cache[key] = samples
    return samples


def open_samples(cfg: ExperimentConfig, sample_cache: dict | None = None, log=print) -> "SampleSet | ShardedSamples":
    """The samples training reads: in memory (the default), or out of core (edgerec.data.shards) from
    data.shards, or from shards built under output_dir/_shards when data.out_of_core is set. Under
    torchrun always out of core: rank 0 finds or builds the shards and tells the others where."""
    from edgerec.data.shards import ShardedSamples, data_settings, dataset_fingerprint

    d = cfg.data
    w = distributed.world()
    if not (d.shards or d.out_of_core):
        if w.size == 1:
            return _cached_samples(cfg, sample_cache)
        d.out_of_core = True  # N in-memory copies would multiply the memory by N: ranks share shards
        log(f"[{cfg.expid}] {w.size} processes: training from out-of-core shards (data.out_of_core=true)")
    if w.size > 1:
        distributed.init(resolve_device(cfg.train.device))
        path = Path(distributed.from_rank0(lambda: str(ensure_shards(cfg, log))))
    else:
        path = ensure_shards(cfg, log)
    shards = ShardedSamples(path, d.shuffle_window)
    shards.check_data(data_settings(cfg), cfg.expid, dataset_fingerprint(cfg.dataset, prepare=False))
    d.rows_per_group = shards.rows_per_group  # the row groups the shards have: what the ledger records
    shards.spec = replace(shards.spec, max_len=d.max_len)  # histories are cut to L per batch: this run's L
    return shards


def ensure_shards(cfg: ExperimentConfig, log=print) -> Path:
    """The shard folder of cfg: data.shards as given, or output_dir/_shards/<digest of the data
    settings, the prepared dataset and rows_per_group>, built on first use and reused after. A new
    build names the folders of another prepare or import of a dataset (never reused) in the log."""
    from edgerec.data.shards import data_settings, dataset_fingerprint, stale_shards, write_shards
    from edgerec.io import sha256_json

    d = cfg.data
    if d.shards:
        return Path(d.shards)
    settings = data_settings(cfg)
    meta = dataset_fingerprint(cfg.dataset)  # prepares the dataset when it is not yet
    path = Path(cfg.output_dir) / "_shards" / sha256_json({**settings, "dataset_meta": meta,
                                                           "rows_per_group": d.rows_per_group})[:12]
    if not (path / "manifest.json").is_file():
        t0 = time.perf_counter()
        samples = build_samples(cfg)
        write_shards(samples, path, settings, d.rows_per_group, meta)
        del samples
        log(f"[{cfg.expid}] wrote out-of-core shards to {path} ({time.perf_counter() - t0:.1f} s)")
        for stale, mib in stale_shards(path.parent, keep=path):
            log(f"[{cfg.expid}] note: {stale} ({mib:,.0f} MiB) holds shards of another prepare or import of its "
                f"dataset, which nothing reuses; remove it when no run on another machine trains from it")
    return path


def run_experiment(cfg: ExperimentConfig, log=print, sample_cache: dict | None = None,
                   write_ledger: bool = True) -> RunResult:
    """Train, pick the best epoch on validation, evaluate it on test, save, and log to the ledger."""
    t_start = time.perf_counter()
    log = distributed.rank0_only(log)  # under torchrun only rank 0 speaks
    check_before_work(cfg, write_ledger)
    samples = open_samples(cfg, sample_cache, log)
    model = build_model(cfg, samples.spec)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[{cfg.expid}] {cfg.model} on {cfg.dataset} ({cfg.protocol}, L={cfg.data.max_len}, seed {cfg.train.seed}): "
        f"{len(samples.splits['train']):,} train / {len(samples.splits['valid']):,} valid / "
        f"{len(samples.splits['test']):,} test samples, {n_params:,} parameters")
    w = distributed.world()
    fit = Trainer(cfg.train, log=log).fit(model, samples)
    test = evaluate_split(model, samples, "test", cfg.train.metrics, cfg.train.eval_batch_size)
    if not w.main:  # rank 0 writes the checkpoint and the ledger
        return RunResult(cfg.expid, cfg.model, cfg.dataset, cfg.train.seed, fit.valid, test, fit.best_epoch,
                         len(fit.history), round(fit.train_seconds, 2), round(time.perf_counter() - t_start, 2), "",
                         cfg.hash(), trained=model)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_dir = Path(cfg.output_dir) / cfg.expid / f"{stamp}-seed{cfg.train.seed}"
    save_checkpoint(run_dir, model, {"experiment": cfg.to_dict(), "feature_spec": samples.spec.to_dict(),
                                     "model": cfg.model, "samples": samples.info})
    save_id_maps(run_dir, samples)
    wall = time.perf_counter() - t_start
    result = RunResult(cfg.expid, cfg.model, cfg.dataset, cfg.train.seed, fit.valid, test, fit.best_epoch,
                       len(fit.history), round(fit.train_seconds, 2), round(wall, 2), str(run_dir), cfg.hash(),
                       trained=model, sample_set=samples)
    if write_ledger:
        append_run(cfg.ledger, {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "expid": cfg.expid,
            "dataset": cfg.dataset, "protocol": cfg.protocol, "model": cfg.model, "config_hash": cfg.hash(),
            "seed": cfg.train.seed, "valid": fit.valid, "test": test, "best_epoch": fit.best_epoch,
            "epochs_run": len(fit.history), "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
            "train_samples_per_second": round(fit.samples_per_second, 1), "n_params": n_params,
            "run_dir": str(run_dir), "machine": machine_info(cfg.train.threads), "processes": w.size,
            "config": cfg.to_dict(),
        })
    return result


def load_run(run_dir: str | Path, sample_cache: dict | None = None) -> tuple[ExperimentConfig, CTRModel, SampleSet]:
    """Rebuild config, samples (deterministic from the seed; shared through `sample_cache` between
    runs of the same data and seed) and the trained model of a run."""
    run_dir = Path(run_dir)
    meta, state = load_state(run_dir)  # the files' own checks first: before any data is loaded
    where = str(run_dir / "config.json")
    cfg = experiment_from_dict(meta["experiment"], where=where)
    samples = _cached_samples(cfg, sample_cache)
    try:
        spec = FeatureSpec.from_dict(meta["feature_spec"])
    except TypeError as e:
        raise EdgerecError(f"{where}: feature_spec is malformed ({cut(str(e), 120)}); {RETRAIN}.") from None
    if spec != samples.spec:
        old_vocab = (spec.n_items, spec.n_users) == (samples.spec.n_items - 1, samples.spec.n_users - 1)
        why = ("it was trained before edgerec reserved an out-of-vocabulary index (2026-12)" if old_vocab
               else "the data or the sample builders changed since training (feature spec differs)")
        raise EdgerecError(f"{run_dir}: {why}; retrain it with `edgerec train`.")
    check_id_maps(run_dir, samples)
    model = new_model(cfg, spec, where)
    check_fits(model, state, run_dir / WEIGHTS)
    model.load_state_dict(state)
    return cfg, model, samples
