"""Trainer: seeded, deterministic mini-batch training with early stopping on validation.

Same config + seed -> same metrics on CPU (tests/test_trainer.py checks this bit for bit).
The best epoch's weights (by `monitor` on the validation split) are kept in memory and restored
at the end; `save_checkpoint` writes them as safetensors next to a JSON config, atomically, and the
config records the weights' sha256 (the run's manifest), which `load_state` checks.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from edgerec.data.samples import SampleSet
from edgerec.errors import EdgerecError, TrainingDiverged
from edgerec.features.definition import cut
from edgerec.io import atomic_path, sha256_file, sha256_json, write_json_atomic
from edgerec.models.base import CTRModel
from edgerec.train import distributed
from edgerec.train.config import ConfigError, TrainConfig
from edgerec.train.metrics import evaluate, lower_is_better


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # On CUDA a few kernels (embedding backward, index_add) have no deterministic version: warn there
    # instead of failing. CPU runs stay bit-for-bit reproducible (tests/test_trainer.py).
    torch.use_deterministic_algorithms(deterministic, warn_only=torch.cuda.is_available())


def resolve_device(name: str) -> torch.device:
    """train.device -> a torch.device; 'auto' is CUDA when one is visible, else CPU. A device this
    machine lacks is a ConfigError (run_experiment asks before loading any data; cuda:7 used to fail
    at the first batch)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        n = torch.cuda.device_count()
        if int(name.partition(":")[2] or 0) >= n:
            sees = f"sees {n} CUDA device(s), cuda:0 to cuda:{n - 1}" if n else "sees no CUDA device"
            raise ConfigError(f"train.device={name!r} but torch {torch.__version__} {sees}; "
                              f"use train.device=cpu (or auto).")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    return torch.device(name)


def bf16_unsupported(device: torch.device) -> str | None:
    """Why `device` should not train in bf16, or None when it can. CPU: native bf16 arithmetic, i.e.
    AVX512-BF16 or AMX (x86). oneDNN also runs bf16 on plain AVX512 by converting, but slower than fp32,
    which would make the option a silent slow-down. CUDA: compute capability 8.0 (Ampere) or newer, of
    the device asked for (torch.cuda.is_bf16_supported looks at the current device only)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) >= (8, 0):
            return None
        return (f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor}) has no native "
                f"bf16 (needs 8.0+, Ampere or newer)")
    if device.type == "cpu":
        native = _cpu_flag("_is_avx512_bf16_supported") or _cpu_flag("_is_amx_tile_supported")
        if native and torch.backends.mkldnn.is_available():
            return None
        return (f"this CPU (torch sees {torch.backends.cpu.get_cpu_capability()}) has no native bf16 arithmetic "
                f"(AVX512-BF16 or AMX); bf16 would be emulated, slower than fp32")
    return f"bf16 autocast is not wired up for {device.type}"


def _cpu_flag(name: str) -> bool:
    """torch.cpu's private feature probes (x86 only; absent or False elsewhere)."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def check_precision(precision: str, device: torch.device, where: str = "train") -> None:
    """train.precision=bf16 on hardware without native bf16 is a ConfigError before any work."""
    if precision == "bf16" and (why := bf16_unsupported(device)):
        raise ConfigError(f"{where}: train.precision=bf16 but {why}; use train.precision=fp32 "
                          f"(--set train.precision=fp32).")


def autocast(precision: str, device: torch.device):
    """The training forward's precision context: bf16 autocast (matmuls and convolutions in bfloat16,
    the parameters stay float32 master weights) or a no-op for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def float32_outputs(out: dict) -> dict:
    """The model's floating outputs as float32, so the loss is computed in float32 under bf16 autocast
    (from logits rounded to bf16, as in any mixed-precision training)."""
    return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in out.items()}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class FitResult:
    best_epoch: int
    valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_per_second: float = 0.0


def param_groups(model: torch.nn.Module, lr: float, lr_scale: dict[str, float]) -> list[dict]:
    """Parameter groups for `train.lr_scale`: each parameter takes the factor of the first pattern its
    name matches (fnmatch), else 1. A pattern that matches nothing is a config error, not a silent no-op."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    used: set[str] = set()
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in named:
        factor = 1.0
        for pattern, f in lr_scale.items():
            if fnmatch.fnmatchcase(name, pattern):
                factor = float(f)
                used.add(pattern)
                break
        groups.setdefault(factor, []).append(p)
    unused = [pat for pat in lr_scale if pat not in used]
    if unused:
        names = ", ".join(n for n, _ in named[:12])
        raise ConfigError(f"train.lr_scale: pattern(s) {unused} match no parameter of {type(model).__name__}. "
                          f"Patterns are fnmatch on parameter names such as: {names}, ...")
    return [{"params": ps, "lr": lr * f} for f, ps in groups.items()]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = param_groups(model, cfg.lr, cfg.lr_scale) if cfg.lr_scale else \
        [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict(model: CTRModel, samples: SampleSet, split: str, batch_size: int = 8192,
            max_len: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_true, y_pred, user) for every sample of `split`, in split order, on the model's device.
    Under torchrun every rank predicts its slice of each batch and all ranks get the whole split."""
    model.eval()
    device = next(model.parameters()).device
    w = distributed.world()
    if w.size == 1:  # straight into arrays of the split's length: no list of chunks, no concatenated copy
        n = len(samples.splits[split])
        y, p, user, at = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.int64), 0
        for batch in samples.batches(split, batch_size, shuffle=False, max_len=max_len):
            b = len(batch["label"])
            p[at: at + b] = model(to_device(batch, device))["y_pred"].float().cpu().numpy()
            y[at: at + b], user[at: at + b], at = batch["label"].numpy(), batch["user"].numpy(), at + b
        return y, p, user
    preds, labels, users = [], [], []
    for batch in samples.batches(split, batch_size, shuffle=False, max_len=max_len, rank=w.rank, world=w.size):
        n = len(batch["label"])
        preds.append(model(to_device(batch, device))["y_pred"].float().cpu().numpy() if n else np.zeros(0, np.float32))
        labels.append(batch["label"].numpy())
        users.append(batch["user"].numpy())
    preds, labels, users = (distributed.gather_batches(x, w) for x in (preds, labels, users))
    if not preds:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(labels), np.concatenate(preds), np.concatenate(users)


def evaluate_split(model: CTRModel, samples: SampleSet, split: str, metrics: list[str],
                   batch_size: int = 8192) -> dict[str, float]:
    y, p, user = predict(model, samples, split, batch_size)
    return evaluate(metrics, y, p, user, samples.splits[split].metric_subsets())


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print):
        self.cfg = cfg
        self.log = log

    def fit(self, model: CTRModel, samples: SampleSet) -> FitResult:
        cfg = self.cfg
        torch.set_num_threads(int(os.environ.get("EDGEREC_THREADS", cfg.threads)))  # env wins: shared machines
        device = resolve_device(cfg.device)
        w = distributed.world()
        if w.size > 1 and device.type == "cuda":
            device = torch.device("cuda", w.local_rank)
        check_precision(cfg.precision, device)  # run_experiment asked already; Trainer is used alone too
        seed_everything(cfg.seed, cfg.deterministic)
        model.to(device)
        distributed.init(device)
        net = model
        if w.size > 1:  # static_graph: the same parameters are used every step, some models leave a few unused
            net = torch.nn.parallel.DistributedDataParallel(model, static_graph=True)
        log = distributed.rank0_only(self.log)
        opt = make_optimizer(model, cfg)
        sign = -1.0 if lower_is_better(cfg.monitor) else 1.0
        best, best_state, best_epoch, bad_epochs = -math.inf, None, -1, 0
        history: list[dict] = []
        n_seen, t_train = 0, 0.0
        for epoch in range(cfg.epochs):
            samples.on_epoch_start(epoch)
            model.train()
            n_train = len(samples.splits["train"])
            steps = math.ceil(n_train / cfg.batch_size)
            if cfg.max_steps_per_epoch:
                steps = min(steps, cfg.max_steps_per_epoch)
            batches = samples.batches("train", cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch,
                                      rank=w.rank, world=w.size, drop_short=True)
            bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not cfg.progress or not w.main, mininterval=1.0)
            t0, loss_sum, n_batches = time.perf_counter(), 0.0, 0
            for step, batch in enumerate(bar):
                if step >= steps:
                    break
                batch = to_device(batch, device)
                with autocast(cfg.precision, device):
                    out = net(batch)
                loss = model.loss(batch, float32_outputs(out))  # evaluation below stays float32, as serving
                if not distributed.all_finite(loss, w):
                    where = f" on at least one of the {w.size} ranks (this rank's: {loss.item()})" if w.size > 1 else ""
                    raise TrainingDiverged(f"the training loss became NaN or infinite at epoch {epoch + 1} step {step}"
                                           f"{where}; lower train.lr (now {cfg.lr}) or set train.grad_clip.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                loss_sum += loss.item()
                n_batches += 1
                n_seen += len(batch["label"])
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}")
            bar.close()
            t_train += time.perf_counter() - t0
            valid = evaluate_split(model, samples, "valid", cfg.metrics, cfg.eval_batch_size)
            train_loss = distributed.total(loss_sum, w) / max(distributed.total(n_batches, w), 1)  # mean over ranks
            record = {"epoch": epoch + 1, "train_loss": train_loss, **{f"valid_{k}": v for k, v in valid.items()}}
            history.append(record)
            score = sign * valid[cfg.monitor]  # the same on every rank: the predictions were gathered
            improved = score > best  # False for NaN: an epoch with an undefined metric never becomes the best
            log(f"  epoch {epoch + 1:>2}  loss {record['train_loss']:.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in valid.items()) + ("  *" if improved else ""))
            if improved:
                best, best_epoch, bad_epochs = score, epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    break
        if best_epoch < 0:
            raise ConfigError(_no_best_epoch_message(cfg.monitor, len(history)))
        model.load_state_dict(best_state)
        model.to("cpu")  # callers (test evaluation, checkpoints, serving) get a CPU model back
        valid_best = {k[len("valid_"):]: v for k, v in history[best_epoch - 1].items() if k.startswith("valid_")}
        n_seen = int(distributed.total(n_seen, w))  # samples of all ranks
        return FitResult(best_epoch, valid_best, history, t_train, n_seen / max(t_train, 1e-9))


def _no_best_epoch_message(monitor: str, epochs: int) -> str:
    """Why no epoch could be picked: without this check `history[best_epoch - 1]` with best_epoch = -1
    would silently report the second-to-last epoch as the best one."""
    return (f"train.monitor={monitor!r} was NaN (or infinite) on the validation split in all {epochs} epochs run, so no "
            f"epoch can be picked as the best. The metric is undefined there: most likely the validation split "
            f"has a single class (only clicks or only non-clicks; for per-user metrics such as GAUC, no user "
            f"with both), e.g. because it is too small. Monitor another metric of train.metrics (e.g. "
            f"--set train.monitor=logloss) or use a larger validation split.")


WEIGHTS = "model.safetensors"
RETRAIN = "retrain it with `edgerec train` (or copy the run folder again)"


def save_checkpoint(run_dir: str | Path, model: CTRModel, config: dict) -> None:
    """model.safetensors, then config.json with its size and sha256 under "weights" (the run's manifest),
    each written to a temp file and renamed. Without the checksum a damaged copy loaded and answered:
    every 997th byte flipped evaluated with exit 0 (AUC 0.444 instead of 0.586) and served scores of 1.0."""
    run_dir = Path(run_dir)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"model": type(model).__name__})
        weights = {"file": WEIGHTS, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp),
                   "config_sha256": sha256_json(config)}  # the config the weights belong to: edits are damage too
    write_json_atomic(run_dir / "config.json", {**config, "weights": weights})


def load_state(run_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and the weights of a run, checked before anything uses them: a missing, unreadable,
    empty, truncated, damaged (sha256) or foreign (not safetensors) file, or a tensor holding NaN or
    infinity (those served a healthy /health, then 500s), is ONE EdgerecError naming the file and the
    problem, and so is a config.json edited since training (its sha256 is recorded beside the weights')
    or one without the record (saved before 2026-12: those need retraining anyway). Whether the
    tensors fit the model is `check_fits`'s job."""
    run_dir = Path(run_dir)
    path = run_dir / WEIGHTS
    if not (run_dir / "config.json").is_file() or not path.is_file():
        raise EdgerecError(f"{run_dir} is not a run directory (needs config.json and {WEIGHTS}).")
    config = _read_run_config(run_dir / "config.json")
    size = path.stat().st_size
    if size == 0:
        raise EdgerecError(f"{path}: empty file; {RETRAIN}.")
    manifest = config.get("weights")
    if manifest is None:  # every run of before 2026-12 needs retraining anyway (the OOV index changed the spec)
        raise EdgerecError(f"{run_dir / 'config.json'} records no sha256 of {WEIGHTS} (saved before 2026-12, or "
                           f"the record was removed), so damage to the run cannot be detected; {RETRAIN}.")
    elif not (isinstance(manifest, dict) and isinstance(manifest.get("bytes"), int)
              and isinstance(manifest.get("sha256"), str) and isinstance(manifest.get("config_sha256"), str)):
        raise EdgerecError(f"{run_dir / 'config.json'}: \"weights\" = {cut(manifest)} is not a manifest "
                           f"(bytes, sha256, config_sha256; runs saved before the config checksum lack the last); "
                           f"{RETRAIN}.")
    elif size != manifest["bytes"]:
        raise EdgerecError(f"{path}: truncated or padded: {size:,} bytes, config.json says {manifest['bytes']:,}; "
                           f"{RETRAIN}.")
    elif sha256_json({k: v for k, v in config.items() if k != "weights"}) != manifest["config_sha256"]:
        raise EdgerecError(f"{run_dir / 'config.json'}: edited since training (its sha256 differs from the one "
                           f"recorded beside the weights): the weights belong to another config; {RETRAIN}, or "
                           "train again with the changed config.")
    elif (digest := sha256_file(path)) != manifest["sha256"]:
        raise EdgerecError(f"{path}: checksum mismatch (sha256 {digest[:12]}..., config.json records "
                           f"{manifest['sha256'][:12]}...): the file is damaged or was replaced; {RETRAIN}.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise EdgerecError(f"{path}: not a readable safetensors file ({cut(str(e), 120)}); {RETRAIN}.") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise EdgerecError(f"{path}: {len(bad)} of {len(state)} tensor(s) hold NaN or infinite values "
                           f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); {RETRAIN}.")
    return config, state


def _read_run_config(path: Path) -> dict:
    """A run's config.json as a dict holding the "experiment" and "feature_spec" mappings load_run
    reads, or an EdgerecError naming the file (it was a JSONDecodeError or KeyError traceback)."""
    try:
        config = json.loads(path.read_bytes())
    except OSError as e:
        raise EdgerecError(f"{path}: cannot read it ({e.strerror}).") from None
    except (ValueError, RecursionError) as e:  # JSON syntax, not UTF-8, nested too deeply
        raise EdgerecError(f"{path}: not valid JSON ({cut(str(e), 120)}); {RETRAIN}.") from None
    missing = [k for k in ("experiment", "feature_spec")
               if not isinstance(config, dict) or not isinstance(config.get(k), dict)]
    if missing:
        raise EdgerecError(f"{path}: no {' or '.join(repr(k) for k in missing)} mapping, so it is not the config of "
                           f"an edgerec run (or it is damaged); {RETRAIN}.")
    return config


def check_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """The saved tensors are exactly the model's: same names, shapes and dtypes, or ONE EdgerecError
    naming what differs. load_state_dict's RuntimeError spans many lines, and it casts a wrong dtype
    silently."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} is {list(state[k].shape)} {_dtype(state[k])}, the model's {list(v.shape)} {_dtype(v)}"
             for k, v in own.items() if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)]
    problems = [f"{what} {len(names)}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                for what, names in (("missing", missing), ("unexpected", unexpected), ("mismatched", wrong)) if names]
    if problems:
        raise EdgerecError(f"{path}: does not hold the tensors of the {type(model).__name__} its config.json "
                           f"describes ({'; '.join(problems)}); {RETRAIN}.")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")
