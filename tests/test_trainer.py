"""Trainer: determinism, checkpoints, ledger, learning on real data, early stopping."""

from __future__ import annotations

import json

import pytest
import torch

from edgerec.train.config import load_experiment
from edgerec.train.experiment import load_run, run_experiment
from edgerec.train.ledger import read_ledger
from edgerec.train.trainer import predict


def _cfg(config_dir, expid, *extra):
    return load_experiment(config_dir / "ctr.yaml", expid, [
        f"output_dir={config_dir / 'runs'}", f"ledger={config_dir / 'ledger.jsonl'}", *extra])


def test_same_seed_same_result_bit_for_bit(config_dir):
    a = run_experiment(_cfg(config_dir, "DIN_test"), log=lambda *_: None)
    b = run_experiment(_cfg(config_dir, "DIN_test"), log=lambda *_: None)
    assert a.test == b.test and a.valid == b.valid
    c = run_experiment(_cfg(config_dir, "DIN_test", "train.seed=99"), log=lambda *_: None)
    assert c.test != a.test


def test_checkpoint_round_trip_and_ledger(config_dir):
    r = run_experiment(_cfg(config_dir, "DNN_test"), log=lambda *_: None)
    cfg, model, samples = load_run(r.run_dir)
    y, p, _ = predict(model, samples, "test")
    from edgerec.train.metrics import auc

    assert auc(y, p) == pytest.approx(r.test["AUC"], abs=1e-12)
    saved = json.loads((config_dir / "runs" / "DNN_test").glob("*/config.json").__next__().read_text())
    assert saved["model"] == "DNN" and saved["experiment"]["expid"] == "DNN_test"
    assert not list((config_dir / "runs").rglob("*.tmp"))  # atomic writes left nothing behind
    (line,) = read_ledger(config_dir / "ledger.jsonl")
    for key in ("dataset", "model", "config_hash", "seed", "valid", "test", "wall_seconds", "machine", "config"):
        assert key in line
    assert line["test"]["AUC"] == r.test["AUC"] and line["machine"]["cpu_count"] >= 1


def test_learns_on_real_data(config_dir):
    """One epoch of DNN on MovieLens-100K must clear popularity-level AUC by a margin."""
    r = run_experiment(_cfg(config_dir, "DNN_ml100k", "train.epochs=1", "train.progress=false"),
                       log=lambda *_: None)
    assert r.test["AUC"] > 0.75


def test_early_stopping_restores_best_epoch(config_dir):
    # lr so large that validation gets worse after the first epoch
    r = run_experiment(_cfg(config_dir, "DNN_test", "train.epochs=8", "train.patience=1", "train.lr=0.5"),
                       log=lambda *_: None)
    assert r.epochs_run < 8 or r.best_epoch == 8
    cfg, model, samples = load_run(r.run_dir)
    y, p, user = predict(model, samples, "valid")
    from edgerec.train.metrics import auc

    assert auc(y, p) == pytest.approx(r.valid["AUC"], abs=1e-12)


def test_nonfinite_loss_is_reported(config_dir, monkeypatch):
    from edgerec.models.dnn import DNN

    monkeypatch.setattr(DNN, "loss", lambda self, batch, out: torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match="lower train.lr"):
        run_experiment(_cfg(config_dir, "DNN_test"), log=lambda *_: None)


def test_train_device_is_validated_and_resolved(config_dir):
    from edgerec.errors import ConfigError
    from edgerec.train.trainer import resolve_device

    with pytest.raises(ConfigError, match="train.device must be cpu, cuda, cuda:N or auto"):
        _cfg(config_dir, "DIN_test", "train.device=gpu")
    cfg = _cfg(config_dir, "DIN_test", "train.device=auto")
    assert cfg.hash() == _cfg(config_dir, "DIN_test").hash()  # where it ran is not what ran
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device; use train.device=cpu"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"train.device='cuda:\d+' but torch .* sees (no|\d+) CUDA device"):
        resolve_device(f"cuda:{max(torch.cuda.device_count(), 7)}")


def test_a_missing_device_or_an_unwritable_output_fails_before_any_data_is_loaded(config_dir, monkeypatch):
    """cuda:7 used to fail at the first batch, an unwritable output_dir or ledger after training."""
    import edgerec.train.experiment as experiment
    from edgerec.errors import ConfigError, EdgerecError

    monkeypatch.setattr(experiment, "build_samples", lambda cfg: pytest.fail("data loaded before the checks"))
    with pytest.raises(ConfigError, match=r"train.device='cuda:\d+' but torch"):
        run_experiment(_cfg(config_dir, "DNN_test", f"train.device=cuda:{max(torch.cuda.device_count(), 7)}"))
    (config_dir / "a_file").write_text("")
    with pytest.raises(EdgerecError, match=r"DNN_test: output_dir \(--set output_dir=DIR\): cannot write .*a_file/sub "
                                           r"\(Not a directory\); choose a writable path"):
        run_experiment(_cfg(config_dir, "DNN_test", f"output_dir={config_dir / 'a_file' / 'sub'}"))
    with pytest.raises(EdgerecError, match=r"ledger \(--set ledger=FILE\): cannot write .* \(Is a directory\)"):
        run_experiment(_cfg(config_dir, "DNN_test", f"ledger={config_dir}"))
    with pytest.raises(EdgerecError, match=r"ledger .*a_file/l.jsonl \(.*a_file is a file, not a folder\)"):
        run_experiment(_cfg(config_dir, "DNN_test", f"ledger={config_dir / 'a_file' / 'l.jsonl'}"))


def test_lr_scale_zero_freezes_the_fourier_frequencies_and_nothing_else(samples_for_lr_scale):
    from edgerec.train.trainer import make_optimizer

    cfg_train, model, batch = samples_for_lr_scale
    cfg_train.lr_scale = {"*omega": 0.0}
    opt = make_optimizer(model, cfg_train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.loss(batch, model(batch)).backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "relative.omega" not in moved
    assert any(n.startswith("mlp.") for n in moved) and any(n.startswith("absolute.") for n in moved)
    assert sorted(g["lr"] for g in opt.param_groups) == [0.0, cfg_train.lr]


def test_lr_scale_pattern_that_matches_nothing_is_a_config_error(samples_for_lr_scale):
    from edgerec.errors import ConfigError
    from edgerec.train.trainer import make_optimizer

    cfg_train, model, _ = samples_for_lr_scale
    cfg_train.lr_scale = {"*omgea": 0.01}
    with pytest.raises(ConfigError, match=r"\*omgea.*match no parameter of DiCycle.*relative\.omega"):
        make_optimizer(model, cfg_train)


def test_lr_scale_negative_factor_is_rejected_by_the_config(config_dir):
    from edgerec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lr_scale\['\*omega'\] = -1.*>= 0"):
        _cfg(config_dir, "DiCycle_test", "train.lr_scale.*omega=-1")


@pytest.fixture()
def samples_for_lr_scale(ml100k):
    import numpy as np

    from edgerec.data.samples import build_dicycle
    from edgerec.models import DiCycle
    from edgerec.train.config import TrainConfig

    torch.manual_seed(0)
    s = build_dicycle(ml100k, max_len=10)
    model = DiCycle(s.spec, embedding_dim=8)
    return TrainConfig(lr=1e-2), model, s.make_batch(s.splits["train"], np.arange(64))


def _validation_aucs(monkeypatch, aucs):
    """Make the validation AUC of epoch e be aucs[e] (the other metrics stay finite)."""
    import edgerec.train.trainer as trainer

    it = iter(aucs)
    monkeypatch.setattr(trainer, "evaluate_split", lambda model, samples, split, metrics, batch_size=8192:
                        {m: next(it) if m == "AUC" else 0.5 for m in metrics})


def test_monitor_nan_in_every_epoch_is_an_error_not_a_best_epoch(config_dir, monkeypatch):
    """All-NaN validation AUC (e.g. a validation split with one class): no epoch is the best. Before,
    best_epoch stayed -1 and history[-2] was reported as the best epoch."""
    from edgerec.errors import ConfigError

    _validation_aucs(monkeypatch, [float("nan")] * 3)
    with pytest.raises(ConfigError, match=r"train.monitor='AUC' was NaN .* in all 3 epochs run.*single class"
                                          r".*train.monitor=logloss"):
        run_experiment(_cfg(config_dir, "DNN_test", "train.epochs=3", "train.patience=5"), log=lambda *_: None)


def test_monitor_nan_in_some_epochs_counts_as_not_improved(config_dir, monkeypatch):
    _validation_aucs(monkeypatch, [float("nan"), 0.6, float("nan"), 0.55])
    r = run_experiment(_cfg(config_dir, "DNN_test", "train.epochs=4", "train.patience=5"), log=lambda *_: None)
    assert r.best_epoch == 2 and r.valid["AUC"] == 0.6 and r.epochs_run == 4


def test_a_model_constructors_refusal_is_a_config_error_naming_the_experiment(config_dir):
    """COUPA refuses position_mode=pal without display positions; that was a ValueError traceback."""
    from edgerec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"COUPA_ml100k: model_args of COUPA: position_mode 'pal' needs display"):
        run_experiment(_cfg(config_dir, "COUPA_ml100k", "model_args.position_mode=pal"), log=lambda *_: None)


def test_train_precision_bf16_trains_in_bf16_and_keeps_float32_weights(config_dir, monkeypatch):
    """bf16 runs the forward's matmuls in bfloat16 (the attention unit's output is bf16), the parameters,
    loss and evaluation stay float32, the result is reproducible, and it differs from fp32 (so the switch
    does something). A ConfigError for an unknown value, and the hash of fp32 runs is unchanged."""
    from edgerec.errors import ConfigError
    from edgerec.models.layers.attention import TargetAttention
    from edgerec.train.trainer import bf16_unsupported

    if bf16_unsupported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 (the refusal is tested below)")  # CI's machines have AVX512
    with pytest.raises(ConfigError, match="train.precision must be fp32 or bf16, got 'fp16'"):
        _cfg(config_dir, "DIN_test", "train.precision=fp16")
    assert _cfg(config_dir, "DIN_test", "train.precision=fp32").hash() == _cfg(config_dir, "DIN_test").hash()
    assert _cfg(config_dir, "DIN_test", "train.precision=bf16").hash() != _cfg(config_dir, "DIN_test").hash()
    seen = []  # the dtype of the attention weights at every call
    real = TargetAttention.forward_packed

    def recording(self, *args):
        pooled, weights = real(self, *args)
        seen.append(weights.dtype)
        return pooled, weights

    monkeypatch.setattr(TargetAttention, "forward_packed", recording)
    bf = run_experiment(_cfg(config_dir, "DIN_test", "train.precision=bf16"), log=lambda *_: None)
    assert torch.bfloat16 in seen and torch.float32 in seen  # bf16 in training, float32 in evaluation
    again = run_experiment(_cfg(config_dir, "DIN_test", "train.precision=bf16"), log=lambda *_: None)
    fp = run_experiment(_cfg(config_dir, "DIN_test"), log=lambda *_: None)
    assert bf.test == again.test and bf.test != fp.test
    assert abs(bf.test["AUC"] - fp.test["AUC"]) < 0.05
    _, model, _ = load_run(bf.run_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bf16_without_hardware_support_is_refused_before_any_data_is_loaded(config_dir, monkeypatch):
    import edgerec.train.experiment as experiment
    from edgerec.errors import ConfigError

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)  # as on a CPU without native bf16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(experiment, "build_samples", lambda cfg: pytest.fail("data loaded before the checks"))
    with pytest.raises(ConfigError, match=r"DNN_test: train.precision=bf16 but this CPU \(torch sees .*\) has no native "
                                          r"bf16 arithmetic \(AVX512-BF16 or AMX\); bf16 would be emulated, slower than "
                                          r"fp32; use train.precision=fp32"):
        run_experiment(_cfg(config_dir, "DNN_test", "train.precision=bf16"))
