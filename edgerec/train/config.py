"""Experiment configs: YAML files with a `Base` block plus named experiments, and --set overrides.

Precedence (lowest first): dataclass defaults < Base < the experiment's block < `--set key=value`.
Every key is checked: an unknown key, a wrong type or an unknown model argument is a ConfigError
that names the file, the experiment, the key path and the closest valid key ("did you mean").

    Base:
      dataset: ml-100k
      train: {epochs: 20, lr: 1.0e-3}
    DIN_ml100k:
      model: DIN
      model_args: {embedding_dim: 32}

`model_args` are the model constructor's keyword arguments (see `edgerec.models`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgerec.errors import ConfigError
from edgerec.features.definition import cut


@dataclass
class DataConfig:
    """How samples are built (see edgerec.data.samples)."""

    max_len: int = 50  # history length L
    item_features: list[str] = field(default_factory=list)  # categorical item side features
    user_features: list[str] = field(default_factory=list)  # categorical user side features
    train_negatives: str = "fixed"  # dicycle protocol: fixed | resample (every epoch)
    eval_negatives: str = "uniform"  # dicycle protocol: uniform | popularity (validation/test negatives)
    negatives: str = "own_history"  # dicycle protocol: own_history | uniform_unseen (edgerec.data.samples)
    min_events: int = 3  # dicycle protocol: users with fewer distinct interaction times are dropped
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # impression protocol
    max_position: int | None = None  # impression protocol: clip positions above this
    # Large catalogues (impression protocol): the N items most exposed in the training period keep their
    # own embedding row, the rest share the out-of-vocabulary row (edgerec.data.samples.cap_items)
    max_items: int | None = None
    # Out of core (edgerec.data.shards): train from Parquet shards and a memory-mapped behaviour store
    out_of_core: bool = False  # build shards under output_dir/_shards first, then train from them
    shards: str | None = None  # or read these (`edgerec batch --shards`); implies out of core
    rows_per_group: int = 65536  # sample rows per Parquet row group (the unit of shuffling)
    shuffle_window: int = 8  # row groups merged and shuffled at a time (memory: window x rows_per_group rows)


PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 1024
    eval_batch_size: int = 8192
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw | sgd
    grad_clip: float | None = None
    # learning-rate multipliers by parameter name (fnmatch pattern -> factor; the first match wins; 0 freezes).
    # Why: Adam moves every parameter by about lr per step whatever its scale, and a Fourier frequency ω is
    # read as ω·Δt with Δt up to hundreds of hours, so lr 1e-2 scrambles the 24 h / 168 h periods.
    lr_scale: dict[str, float] = field(default_factory=dict)
    patience: int = 2  # epochs without validation improvement before stopping
    monitor: str = "AUC"  # validation metric that picks the best checkpoint
    metrics: list[str] = field(default_factory=lambda: ["AUC", "GAUC", "logloss"])
    seed: int = 2024
    threads: int = 2  # torch intra-op threads
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda when one is visible); results are saved on CPU either way
    deterministic: bool = True
    # fp32 | bf16: bf16 runs the training forward under autocast (matmuls in bfloat16; weights, optimizer
    # state, loss and evaluation stay float32). 1.5-2.1x the training speed measured on AVX512-BF16 (docs/results.md).
    precision: str = "fp32"
    max_steps_per_epoch: int | None = None  # smoke tests: cut each epoch short
    progress: bool = True  # tqdm progress bars


@dataclass
class ExperimentConfig:
    expid: str
    dataset: str  # registry id, e.g. ml-100k, o2o-sim:tiny
    protocol: str = "dicycle"  # dicycle | impression
    model: str = "DIN"
    model_args: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs"
    ledger: str = "results/ledger.jsonl"
    description: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Identity of the experiment's substance: ignores names, paths, seed and display options."""
        d = self.to_dict()
        for k in ("expid", "output_dir", "ledger", "description"):
            d.pop(k)
        for k in ("seed", "progress", "threads", "device"):
            d["train"].pop(k)
        if d["train"]["precision"] == "fp32":  # the default before the key existed: earlier hashes stay valid
            d["train"].pop("precision")
        for k, default in _LATER_DATA_KEYS.items():  # likewise for data keys added later
            if d["data"].get(k) == default:
                d["data"].pop(k)
        d["data"].pop("shards", None)  # where the shards are is a path; out_of_core says they are used
        if self.data.shards:
            d["data"]["out_of_core"] = True
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_LATER_DATA_KEYS = {"max_items": None, "out_of_core": False, "rows_per_group": 65536,
                    "shuffle_window": 8}


# ------------------------------------------------------------------------------------------------
# loading


def load_experiment(path: str | Path, expid: str, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found.")
    try:
        doc = safe_yaml(path.read_bytes().decode("utf-8"), str(path)) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start:,}); "
                          "a config is a YAML text file, e.g. configs/ctr.yaml.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping of experiment ids.")
    experiments = [k for k in doc if k != "Base"]
    if expid not in doc or expid == "Base":
        raise ConfigError(f"{path}: no experiment {cut(expid)}.{_did_you_mean(expid, experiments)} "
                          f"Available: {_listing(experiments)}")
    base, exp = doc.get("Base") or {}, doc[expid] or {}
    for name, block in (("Base", base), (expid, exp)):
        if not isinstance(block, dict):
            raise ConfigError(f"{path}: block {name!r} must be a mapping, got {type(block).__name__}.")
    merged = _deep_merge(base, exp)
    merged["expid"] = expid
    for item in overrides or []:
        _apply_override(merged, item)
    return experiment_from_dict(merged, where=f"{path} [{expid}]")


def experiment_from_dict(d: dict, where: str = "config") -> ExperimentConfig:
    d = copy.deepcopy(d)
    cfg = _build(ExperimentConfig, d, where, prefix="")
    _check_semantics(cfg, where)
    return cfg


MAX_YAML_NODES = 100_000  # a config has a few hundred; aliases may not expand a document past this


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load, refusing a document whose aliases (*name) expand it past MAX_YAML_NODES values
    or into itself. PyYAML shares an aliased value, but merging, the key checks and to_dict copy it:
    nine nested aliases of nine ("billion laughs") ran 50 s into a MemoryError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: its aliases (*name) expand it past {MAX_YAML_NODES:,} values, or into "
                              "itself; write the values out, or nest fewer aliases.")
        return loader.construct_document(node)
    except RecursionError:  # PyYAML's composer recurses per level
        raise ConfigError(f"{where}: nested too deeply to be a config (a few levels are).") from None
    except ValueError as e:  # PyYAML's constructors: an integer of > 4300 digits, a date like 2001-13-45
        raise yaml.constructor.ConstructorError(None, None, f"cannot build a value: {cut(str(e), 120)}") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int | None]) -> float:
    """Values in `node` with every alias expanded; linear time, each shared node is counted once and
    reused. A node met again while it is being counted refers to itself: infinite."""
    if id(node) in sizes:
        return math.inf if sizes[id(node)] is None else sizes[id(node)]
    sizes[id(node)] = None
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    sizes[id(node)] = 1 + sum(_expanded_size(c, sizes) for c in children)
    return sizes[id(node)]


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {cut(item)}: expected key=value, e.g. --set train.lr=0.001")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {cut(item)}: empty key")
    try:
        value = safe_yaml(raw, f"--set {cut(item)}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def _apply_override(d: dict, item: str) -> None:
    keys, value = parse_override(item)
    node = d
    for k in keys[:-1]:
        if not isinstance(node.setdefault(k, {}), dict):
            raise ConfigError(f"--set {cut(item)}: {cut(k)} is not a section")
        node = node[k]
    node[keys[-1]] = value


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _did_you_mean(name: str, choices: list) -> str:
    if not isinstance(name, str) or len(name) > 100:  # difflib is quadratic in the length
        return ""
    close = difflib.get_close_matches(name, [c for c in choices if isinstance(c, str)], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _listing(names: list) -> str:
    """Names for a message, cut to ~300 characters whatever the file holds."""
    text = ", ".join(map(str, names))
    return text if len(text) <= 300 else text[:297] + "..."


def _build(cls, d: Any, where: str, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {cut(d)}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {cut(prefix + str(key))}.{_did_you_mean(key, names)} "
                              f"Valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, d[f.name], where, prefix + f.name + ".")
        else:
            kwargs[f.name] = _coerce(d[f.name], tp, where, prefix + f.name)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {[prefix + m for m in missing]}.")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, where: str, key: str) -> Any:
    """Check `value` against the type hint `tp`; accept numeric strings for numbers (YAML's 1e-3)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, key)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {key} = {cut(value)} is not a valid {_type_name(tp)}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {cut(value)}.")
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, arg, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {cut(value)}.")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, got {cut(value)}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: {key} must be an integer, got {cut(value)}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {key} must be a number, got {cut(value)}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {key} must be a string, got {cut(value)}.")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _check_semantics(cfg: ExperimentConfig, where: str) -> None:
    """Checks that need more than types: names of models, protocols, metrics, model_args."""
    from edgerec.data.registry import parse_id
    from edgerec.data.samples import NEGATIVE_SAMPLERS, PROTOCOLS
    from edgerec.errors import EdgerecError
    from edgerec.models import MODELS, model_arg_defaults
    from edgerec.train.metrics import parse_metric

    try:
        parse_id(cfg.dataset)
    except EdgerecError as exc:
        raise ConfigError(f"{where}: dataset: {exc}") from None
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: protocol {cut(cfg.protocol)} unknown.{_did_you_mean(cfg.protocol, list(PROTOCOLS))} "
                          f"Choose from: {', '.join(PROTOCOLS)}")
    if cfg.data.negatives not in NEGATIVE_SAMPLERS:
        raise ConfigError(f"{where}: data.negatives {cut(cfg.data.negatives)} unknown.{_did_you_mean(cfg.data.negatives, list(NEGATIVE_SAMPLERS))} "
                          f"Choose from: {', '.join(NEGATIVE_SAMPLERS)} (docs/config.md)")
    if cfg.model not in MODELS:
        raise ConfigError(f"{where}: model {cut(cfg.model)} unknown.{_did_you_mean(cfg.model, list(MODELS))} "
                          f"Available: {', '.join(sorted(MODELS))}")
    defaults = model_arg_defaults(MODELS[cfg.model])
    for key, value in cfg.model_args.items():
        if key not in defaults:
            raise ConfigError(f"{where}: model_args.{str(key)[:80]} is not an argument of {cfg.model}."
                              f"{_did_you_mean(key, list(defaults))} Valid: {', '.join(defaults)}")
        default = defaults[key]
        if default is not None and default is not inspect.Parameter.empty:
            expected = list if isinstance(default, (list, tuple)) else type(default)
            ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
            if expected is int and isinstance(value, bool):
                ok = False
            if not ok:
                raise ConfigError(f"{where}: model_args.{key} = {cut(value)} should be a {expected.__name__} "
                                  f"(default {default!r}).")
            if isinstance(default, tuple):
                cfg.model_args[key] = tuple(value)
    for metric in [*cfg.train.metrics, cfg.train.monitor]:
        try:
            parse_metric(metric)
        except ValueError as exc:
            raise ConfigError(f"{where}: train.metrics/monitor: {exc}") from None
    if cfg.train.monitor not in cfg.train.metrics:
        raise ConfigError(f"{where}: train.monitor {cut(cfg.train.monitor)} must be one of train.metrics "
                          f"{cut(cfg.train.metrics, 300)}.")
    if cfg.train.optimizer not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"{where}: train.optimizer must be adam, adamw or sgd, got {cut(cfg.train.optimizer)}.")
    for pattern, factor in cfg.train.lr_scale.items():
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 <= factor < math.inf:
            raise ConfigError(f"{where}: train.lr_scale[{cut(pattern)}] = {cut(factor)} must be a finite number >= 0 "
                              f"(a multiplier of train.lr; 0 freezes the matching parameters).")
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", str(cfg.train.device)):
        raise ConfigError(f"{where}: train.device must be cpu, cuda, cuda:N or auto, got {cut(cfg.train.device)}.")
    if cfg.train.precision not in PRECISIONS:
        raise ConfigError(f"{where}: train.precision must be {' or '.join(PRECISIONS)}, "
                          f"got {cut(cfg.train.precision)}.")
    t = cfg.train
    for key, ok, rule in (("lr", t.lr > 0, "> 0, e.g. 1e-3"), ("weight_decay", t.weight_decay >= 0, ">= 0"),
                          ("grad_clip", t.grad_clip is None or t.grad_clip > 0, "> 0 (or null: no clipping)")):
        value = getattr(t, key)
        if not ok or (value is not None and not math.isfinite(value)):  # NaN fails every comparison
            raise ConfigError(f"{where}: train.{key} = {value} must be a finite number {rule}.")
    for key in ("epochs", "batch_size", "eval_batch_size", "threads"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"{where}: train.{key} must be >= 1.")
    if cfg.data.max_len < 1:
        raise ConfigError(f"{where}: data.max_len must be >= 1.")
    if cfg.data.max_items is not None and cfg.protocol == "dicycle":
        raise ConfigError(f"{where}: data.max_items caps the item ids of the impression protocol; the dicycle "
                          "protocol draws negatives per item index and has no cap (set data.max_items=null).")
    if (cfg.data.out_of_core or cfg.data.shards) and cfg.protocol == "dicycle" and cfg.data.train_negatives == "resample":
        raise ConfigError(f"{where}: out-of-core samples keep their training negatives fixed; "
                          "data.train_negatives=resample redraws them in memory every epoch (use fixed, or train "
                          "in memory).")
    for key in ("max_items", "rows_per_group", "shuffle_window"):
        value = getattr(cfg.data, key)
        if value is not None and value < 1:
            raise ConfigError(f"{where}: data.{key} must be >= 1" + (" (or null: no cap)." if key.startswith("max_") else "."))
