"""Config: precedence, overrides, and clear errors for every kind of mistake."""

from __future__ import annotations

import pytest

from edgerec.errors import ConfigError
from edgerec.train.config import load_experiment, parse_override


def write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


BASE = """
Base:
  dataset: ml-100k
  train: {lr: 1.0e-3, epochs: 5}
  model_args: {embedding_dim: 16}
A:
  model: DIN
  train: {epochs: 3}
"""


def test_precedence_defaults_base_experiment_override(tmp_path):
    p = write(tmp_path, BASE)
    cfg = load_experiment(p, "A", ["train.lr=5e-4", "model_args.mlp_units=[64, 32]"])
    assert cfg.train.epochs == 3  # experiment over Base
    assert cfg.train.lr == 5e-4  # --set over Base; YAML reads '5e-4' as a string: coerced
    assert cfg.model_args == {"embedding_dim": 16, "mlp_units": (64, 32)}  # tuple default -> tuple
    assert cfg.train.batch_size == 1024  # dataclass default
    assert cfg.expid == "A"


def test_unknown_key_did_you_mean(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'\. Did you mean 'lr'\?"):
        load_experiment(p, "A", ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown key 'dataste'\. Did you mean 'dataset'\?"):
        load_experiment(write(tmp_path, BASE + "  dataste: x\n"), "A")


def test_unknown_experiment_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"no experiment 'a'\..*Available: A"):
        load_experiment(write(tmp_path, BASE), "a")


def test_model_and_model_args_checked(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"model 'DINx' unknown\. Did you mean 'DIN'\?"):
        load_experiment(p, "A", ["model=DINx"])
    with pytest.raises(ConfigError, match=r"model_args.embeding_dim is not an argument of DIN\. Did you mean 'embedding_dim'"):
        load_experiment(p, "A", ["model_args.embeding_dim=8"])
    with pytest.raises(ConfigError, match=r"model_args.embedding_dim = 'big' should be a int"):
        load_experiment(p, "A", ["model_args.embedding_dim=big"])


def test_type_errors_name_the_key(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"train.epochs must be an integer, got 'three'"):
        load_experiment(p, "A", ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"train.progress must be true or false"):
        load_experiment(p, "A", ["train.progress=maybe"])
    with pytest.raises(ConfigError, match=r"data.item_features must be a list"):
        load_experiment(p, "A", ["data.item_features=genre"])


def test_semantic_errors(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"train.monitor 'GAUC' must be one of train.metrics"):
        load_experiment(p, "A", ["train.monitor=GAUC", "train.metrics=[AUC]"])
    with pytest.raises(ConfigError, match=r"unknown metric 'ACU'"):
        load_experiment(p, "A", ["train.metrics=[ACU]"])
    with pytest.raises(ConfigError, match=r"dataset: unknown dataset 'ml-1m'"):
        load_experiment(p, "A", ["dataset=ml-1m"])
    with pytest.raises(ConfigError, match=r"protocol 'dicyle' unknown\. Did you mean 'dicycle'"):
        load_experiment(p, "A", ["protocol=dicyle"])
    with pytest.raises(ConfigError, match=r"data.negatives 'own_histroy' unknown\. Did you mean 'own_history'"):
        load_experiment(p, "A", ["data.negatives=own_histroy"])
    with pytest.raises(ConfigError, match=r"unknown metric subset 'repaet'.*subsets: repeat, new"):
        load_experiment(p, "A", ["train.metrics=[AUC,GAUC:repaet]"])


def test_bad_yaml_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(write(tmp_path, "A: [unclosed\n"), "A")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml", "A")


def test_hash_ignores_seed_but_not_substance(tmp_path):
    p = write(tmp_path, BASE)
    a = load_experiment(p, "A", ["train.seed=1"])
    b = load_experiment(p, "A", ["train.seed=2"])
    c = load_experiment(p, "A", ["train.lr=0.01"])
    assert a.hash() == b.hash() != c.hash()


def test_shipped_configs_all_load():
    import yaml

    from tests.conftest import ROOT

    path = ROOT / "configs" / "ctr.yaml"
    for expid in yaml.safe_load(path.read_text()):
        if expid != "Base":
            load_experiment(path, expid)
