"""Shared fixtures. Every test session gets its own dataset cache and run folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgerec.data.assets import RECBOLE

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("EDGEREC_THREADS"):  # e.g. EDGEREC_THREADS=1 next to a running benchmark
    import torch

    torch.set_num_threads(int(os.environ["EDGEREC_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("edgerec-data")
    old = os.environ.get("EDGEREC_DATA_DIR")
    os.environ["EDGEREC_DATA_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("EDGEREC_DATA_DIR", None)
    else:
        os.environ["EDGEREC_DATA_DIR"] = old


@pytest.fixture()
def ml100k_copy(tmp_path) -> Path:
    """A writable copy of the real ml-100k files, for corrupting in tests."""
    out = tmp_path / "ml-100k"
    out.mkdir()
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        (out / name).write_bytes(RECBOLE.read_bytes(f"dataset_example/ml-100k/{name}"))
    return out


@pytest.fixture(scope="session")
def ml100k():
    from edgerec.data.registry import load

    return load("ml-100k")


@pytest.fixture(scope="session")
def tiny_sim():
    from edgerec.data.simulator import preset, simulate

    return simulate(preset("tiny", seed=3))


@pytest.fixture()
def config_dir(tmp_path) -> Path:
    shutil.copy(ROOT / "configs" / "ctr.yaml", tmp_path / "ctr.yaml")
    return tmp_path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from tests.servers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_broker():
    from tests.servers import KafkaBroker

    broker = KafkaBroker().start()
    yield broker
    broker.stop()
