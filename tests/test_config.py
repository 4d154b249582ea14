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


@pytest.mark.parametrize("key,value,shown", [
    ("lr", ".nan", "nan"), ("lr", ".inf", "inf"), ("lr", "-1e-3", "-0.001"), ("lr", "0", "0.0"),
    ("weight_decay", ".nan", "nan"), ("weight_decay", "-1", "-1.0"), ("grad_clip", "-.inf", "-inf"),
])
def test_learning_rate_and_friends_must_be_finite_and_in_range(tmp_path, key, value, shown):
    """train.lr: .nan used to reach torch.optim.Adam (a ValueError traceback); inf trained to NaN."""
    with pytest.raises(ConfigError, match=rf"train\.{key} = {shown} must be a finite number [>]"):
        load_experiment(write(tmp_path, BASE), "A", [f"train.{key}={value}"])
    with pytest.raises(ConfigError, match=r"train.lr = nan"):  # in the file too, not only in --set
        load_experiment(write(tmp_path, BASE.replace("lr: 1.0e-3", "lr: .nan")), "A")
    with pytest.raises(ConfigError, match=r"lr_scale\['\*omega'\] = inf must be a finite number >= 0"):
        load_experiment(write(tmp_path, BASE), "A", ["train.lr_scale.*omega=.inf"])


def test_binary_or_non_utf8_yaml_is_one_line(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    with pytest.raises(ConfigError, match=r"bin\.yaml: not UTF-8 text \(byte 0x89 at offset 0\)"):
        load_experiment(p, "A")
    p.write_bytes(b"A: {model: DIN}\n\x00\x01\x02")  # UTF-8, but control characters YAML refuses
    with pytest.raises(ConfigError, match="not valid YAML: unacceptable character") as exc:
        load_experiment(p, "A")
    assert "\n" not in str(exc.value)


def test_yaml_aliases_that_expand_past_a_bound_are_refused(tmp_path):
    """Billion laughs: nine levels of nine aliases are 10^9 values; it ran 50 s into a MemoryError."""
    import time

    levels = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"exp\.yaml: its aliases \(\*name\) expand it past 100,000 values"):
        load_experiment(write(tmp_path, "\n".join(levels) + "\nA: {model: DIN, dataset: ml-100k, description: *l9}\n"),
                        "A")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ConfigError, match="or into itself"):
        load_experiment(write(tmp_path, "A: &a {model: DIN, model_args: {x: *a}}\n"), "A")
    with pytest.raises(ConfigError, match=r"--set .*: its aliases"):  # --set values are YAML too
        parse_override("description=" + "[" + ", ".join(["&x [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"] + ["*x"] * 10 ** 4) + "]")
    shared = "Base: &b {dataset: ml-100k, train: {epochs: 2}}\nA: {model: DIN, description: ok}\nB: *b\n"
    assert load_experiment(write(tmp_path, shared), "A").train.epochs == 2  # a few aliases are fine


def test_error_messages_cut_long_values(tmp_path):
    """A 312 MB error message was printed for one long value; now every offending value is cut."""
    p = write(tmp_path, BASE)
    for override in ("train.epochs=" + "9x" * 10 ** 6, "train." + "k" * 10 ** 6 + "=1", "model=" + "D" * 10 ** 6,
                     "train.metrics=[" + "A" * 10 ** 6 + "]"):
        with pytest.raises(ConfigError) as exc:
            load_experiment(p, "A", [override])
        assert len(str(exc.value)) < 400, str(exc.value)[:500]
    with pytest.raises(ConfigError, match=r"no experiment 'xxx.*\.\.\. Available: A"):
        load_experiment(p, "x" * 10 ** 6)
    with pytest.raises(ConfigError, match=r"unknown key '5'"):  # a non-string key (it was a TypeError)
        load_experiment(write(tmp_path, BASE + "  5: x\n"), "A")
    with pytest.raises(ConfigError, match=r"not valid YAML: cannot build a value: 'Exceeds the limit \(4300 digits\)"):
        load_experiment(write(tmp_path, BASE + "  description: " + "9" * 5000 + "\n"), "A")  # was a ValueError
    assert load_experiment(write(tmp_path, BASE), "A", ["description=2001-13-45"]).description == "2001-13-45"


# ---- hypothesis: the config loader raises nothing but ConfigError, in one short line ----------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.poison import JSONISH  # noqa: E402

_KEYS = st.sampled_from(["model", "dataset", "protocol", "description", "seed", "output_dir", "ledger", "model_args",
                         "train", "data", "train.lr", "train.epochs", "train.batch_size", "train.device",
                         "train.metrics", "train.monitor", "train.threads", "train.grad_clip", "data.max_len",
                         "data.negatives", "model_args.embedding_dim", "model_args.hidden", "nosuch", "train.nosuch"])
_YAML_TOKENS = st.sampled_from([".nan", ".inf", "-1", "0", "1e309", "[", "{", "&a [1]", "*a", "!!python/name:os.system",
                                "'x'", "null", "~", "[1, [2, [3]]]", "9" * 400, "yes", "2026-12-01", "\ud800"])


def _assert_one_short_line(e: ConfigError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and len(msg) < 2000, msg


_SET = st.tuples(_KEYS, _YAML_TOKENS | st.text(max_size=8)).map(lambda kv: f"{kv[0]}={kv[1]}")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(d=st.dictionaries(_KEYS, JSONISH, max_size=3), overrides=st.lists(_SET | _SET | _SET | st.text(max_size=12),
                                                                         max_size=2))
def test_config_loader_raises_only_config_errors(tmp_path_factory, d, overrides):
    """Any experiment mapping (keys the loader knows, JSON-ish values) and any --set strings: a config
    or ConfigError with one short line, never another exception (the issue found 17 tracebacks)."""
    import yaml

    p = tmp_path_factory.mktemp("cfg") / "exp.yaml"
    nested: dict = {}
    for k, v in d.items():  # "train.lr" -> {"train": {"lr": v}}
        head, _, tail = k.partition(".")
        if tail:
            nested.setdefault(head, {}) if isinstance(nested.get(head, {}), dict) else None
            if isinstance(nested.get(head), dict):
                nested[head][tail] = v
        else:
            nested[head] = v
    try:
        valid = {"model": "DNN", "dataset": "o2o-sim:tiny", "protocol": "impression",
                 "train": {"epochs": 1, "lr": 1.0e-3}, "model_args": {"embedding_dim": 4}}
        for k, v in nested.items():  # one or two keys changed at a time: most files get past the first check
            valid[k] = {**valid[k], **v} if isinstance(valid.get(k), dict) and isinstance(v, dict) else v
        p.write_text(yaml.safe_dump({"A": valid}, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError, ValueError):  # a lone surrogate, 4300+ digits: not writable
        p.write_bytes(b"A: {model: DNN, description: \"\\ud800\"}\n")
    try:
        load_experiment(p, "A", overrides)
    except ConfigError as e:
        _assert_one_short_line(e)
