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
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgerec.errors import ConfigError


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
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------
# loading


def load_experiment(path: str | Path, expid: str, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found.")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping of experiment ids.")
    experiments = [k for k in doc if k != "Base"]
    if expid not in doc or expid == "Base":
        raise ConfigError(f"{path}: no experiment {expid!r}.{_did_you_mean(expid, experiments)} "
                          f"Available: {', '.join(experiments)}")
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


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=0.001")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def _apply_override(d: dict, item: str) -> None:
    keys, value = parse_override(item)
    node = d
    for k in keys[:-1]:
        if not isinstance(node.setdefault(k, {}), dict):
            raise ConfigError(f"--set {item!r}: {k!r} is not a section")
        node = node[k]
    node[keys[-1]] = value


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _build(cls, d: Any, where: str, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {d!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {prefix + key!r}.{_did_you_mean(key, names)} "
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
        raise ConfigError(f"{where}: {key} = {value!r} is not a valid {_type_name(tp)}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}.")
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, arg, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}.")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}.")
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
        raise ConfigError(f"{where}: protocol {cfg.protocol!r} unknown.{_did_you_mean(cfg.protocol, list(PROTOCOLS))} "
                          f"Choose from: {', '.join(PROTOCOLS)}")
    if cfg.data.negatives not in NEGATIVE_SAMPLERS:
        raise ConfigError(f"{where}: data.negatives {cfg.data.negatives!r} unknown.{_did_you_mean(cfg.data.negatives, list(NEGATIVE_SAMPLERS))} "
                          f"Choose from: {', '.join(NEGATIVE_SAMPLERS)} (docs/config.md)")
    if cfg.model not in MODELS:
        raise ConfigError(f"{where}: model {cfg.model!r} unknown.{_did_you_mean(cfg.model, list(MODELS))} "
                          f"Available: {', '.join(sorted(MODELS))}")
    defaults = model_arg_defaults(MODELS[cfg.model])
    for key, value in cfg.model_args.items():
        if key not in defaults:
            raise ConfigError(f"{where}: model_args.{key} is not an argument of {cfg.model}."
                              f"{_did_you_mean(key, list(defaults))} Valid: {', '.join(defaults)}")
        default = defaults[key]
        if default is not None and default is not inspect.Parameter.empty:
            expected = list if isinstance(default, (list, tuple)) else type(default)
            ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
            if expected is int and isinstance(value, bool):
                ok = False
            if not ok:
                raise ConfigError(f"{where}: model_args.{key} = {value!r} should be a {expected.__name__} "
                                  f"(default {default!r}).")
            if isinstance(default, tuple):
                cfg.model_args[key] = tuple(value)
    for metric in [*cfg.train.metrics, cfg.train.monitor]:
        try:
            parse_metric(metric)
        except ValueError as exc:
            raise ConfigError(f"{where}: train.metrics/monitor: {exc}") from None
    if cfg.train.monitor not in cfg.train.metrics:
        raise ConfigError(f"{where}: train.monitor {cfg.train.monitor!r} must be one of train.metrics {cfg.train.metrics}.")
    if cfg.train.optimizer not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"{where}: train.optimizer must be adam, adamw or sgd, got {cfg.train.optimizer!r}.")
    for pattern, factor in cfg.train.lr_scale.items():
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0:
            raise ConfigError(f"{where}: train.lr_scale[{pattern!r}] = {factor!r} must be a number >= 0 "
                              f"(a multiplier of train.lr; 0 freezes the matching parameters).")
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", str(cfg.train.device)):
        raise ConfigError(f"{where}: train.device must be cpu, cuda, cuda:N or auto, got {cfg.train.device!r}.")
    for key in ("epochs", "batch_size", "eval_batch_size", "threads"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"{where}: train.{key} must be >= 1.")
    if cfg.data.max_len < 1:
        raise ConfigError(f"{where}: data.max_len must be >= 1.")
