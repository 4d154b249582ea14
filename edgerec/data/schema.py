"""The one event schema every dataset is converted to, and the on-disk dataset layout.

events.parquet   one row per event (interaction or exposure)
    user_id   int64   not null   user key (dataset's own id, or a derived one: see docs/data.md)
    item_id   int64   not null   item key
    ts        int64   not null   unix seconds, UTC
    label     int8    not null   1 = click / interaction, 0 = exposure without click
    position  int16   nullable   1-based display position; null when the dataset has none
    ...side features (dataset-specific, documented in the dataset's meta.json)
items.parquet    optional, one row per item_id (side features)
users.parquet    optional, one row per user_id (side features)
meta.json        name, source, license, row counts, column docs, notes
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edgerec.errors import DataFormatError
from edgerec.io import atomic_path, write_json_atomic

CORE_FIELDS: list[pa.Field] = [
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("label", pa.int8(), nullable=False),
    pa.field("position", pa.int16(), nullable=True),
]
CORE_NAMES = [f.name for f in CORE_FIELDS]

CORE_DOCS = {
    "user_id": "int64, user key",
    "item_id": "int64, item key",
    "ts": "int64, unix seconds UTC",
    "label": "int8, 1 = click/interaction, 0 = exposure without click",
    "position": "int16 nullable, 1-based display position",
}


def make_events(columns: dict[str, pa.Array | list], side_docs: dict[str, str] | None = None) -> pa.Table:
    """Build an events table: the core fields first (cast to their schema types), then side columns."""
    missing = [n for n in CORE_NAMES if n not in columns]
    if missing:
        raise ValueError(f"events are missing core fields {missing}")
    arrays, fields = [], []
    for f in CORE_FIELDS:
        arr = pa.array(columns[f.name]) if not isinstance(columns[f.name], (pa.Array, pa.ChunkedArray)) else columns[f.name]
        arrays.append(pc.cast(arr, f.type))
        fields.append(f)
    for name, arr in columns.items():
        if name in CORE_NAMES:
            continue
        arr = pa.array(arr) if not isinstance(arr, (pa.Array, pa.ChunkedArray)) else arr
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    validate_events(table, source="events")
    return table


def validate_events(table: pa.Table, source: str) -> None:
    """Check the core schema; raise DataFormatError naming the column and first bad row."""
    for f in CORE_FIELDS:
        if f.name not in table.column_names:
            raise DataFormatError(f"{source}: missing core column {f.name!r} ({CORE_DOCS[f.name]}).")
        col = table.column(f.name)
        if col.type != f.type:
            raise DataFormatError(f"{source}: column {f.name!r} has type {col.type}, expected {f.type}.")
        if not f.nullable and col.null_count:
            row = int(pc.index(pc.is_null(col), True).as_py())
            raise DataFormatError(f"{source}: row {row}, column {f.name!r} is null but required.")
    label = table.column("label")
    bad = pc.invert(pc.is_in(label, pa.array([0, 1], pa.int8())))
    if pc.any(bad).as_py():
        row = int(pc.index(bad, True).as_py())
        raise DataFormatError(f"{source}: row {row}, column 'label' = {label[row].as_py()}, expected 0 or 1.")
    pos = table.column("position")
    if pos.null_count < len(pos):
        bad = pc.fill_null(pc.less(pos, 1), False)
        if pc.any(bad).as_py():
            row = int(pc.index(bad, True).as_py())
            raise DataFormatError(f"{source}: row {row}, column 'position' = {pos[row].as_py()}, expected >= 1.")


@dataclass
class EventDataset:
    """A prepared dataset: events plus optional item/user tables and metadata."""

    name: str
    events: pa.Table
    items: pa.Table | None = None
    users: pa.Table | None = None
    meta: dict = field(default_factory=dict)
    extras: dict[str, pa.Table] = field(default_factory=dict)  # e.g. simulator ground truth

    @property
    def tz(self) -> str:
        """The time zone of the calendar features (meta.json `tz`; the bundled sets and the simulator are UTC)."""
        return self.meta.get("tz") or "UTC"

    def save(self, root: Path, dirname: str | None = None) -> Path:
        """Write to root/<name>/ ; each file is written to a temp name and renamed."""
        out = Path(root) / (dirname or self.name)
        out.mkdir(parents=True, exist_ok=True)
        side = {"items.parquet", "users.parquet"}
        try:  # the tables an earlier save wrote (meta "tables"; before 2026-12-02: items and users)
            earlier = set(json.loads((out / "meta.json").read_text()).get("tables", side))
        except (OSError, ValueError, AttributeError):
            earlier = side
        (out / "meta.json").unlink(missing_ok=True)  # the dataset is incomplete until meta is rewritten
        tables = [("items.parquet", self.items), ("users.parquet", self.users)]
        tables += [(f"{k}.parquet", t) for k, t in self.extras.items()]
        keep = {"events.parquet"} | {fname for fname, table in tables if table is not None}
        for name in earlier - keep:  # a table of an earlier save that this one has not: load would read it
            (out / Path(name).name).unlink(missing_ok=True)
        for fname, table in tables:
            if table is not None:
                with atomic_path(out / fname) as tmp:
                    pq.write_table(table, tmp)
        with atomic_path(out / "events.parquet") as tmp:
            pq.write_table(self.events, tmp)
        meta = dict(self.meta)
        meta.update(name=self.name, n_events=self.events.num_rows, tables=sorted(keep),
                    n_users=len(pc.unique(self.events.column("user_id"))),
                    n_items=len(pc.unique(self.events.column("item_id"))),
                    columns={f.name: str(f.type) for f in self.events.schema})
        write_json_atomic(out / "meta.json", meta)  # written last: its presence marks a complete dataset
        return out

    @classmethod
    def load(cls, root: Path, dirname: str, events: bool = True) -> "EventDataset":
        """events=False: everything but the log (an empty table stands in), for a job that reads
        events.parquet itself (edgerec.data.shards_spark)."""
        d = Path(root) / dirname
        meta_path = d / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(d)
        meta = json.loads(meta_path.read_text())
        if events:
            table = pq.read_table(d / "events.parquet")
            validate_events(table, source=str(d / "events.parquet"))
        else:
            table = pa.table({})
        items = pq.read_table(d / "items.parquet") if (d / "items.parquet").exists() else None
        users = pq.read_table(d / "users.parquet") if (d / "users.parquet").exists() else None
        core = {"events.parquet", "items.parquet", "users.parquet"}
        extras = {p.stem: pq.read_table(p) for p in sorted(d.glob("*.parquet")) if p.name not in core}
        return cls(name=meta["name"], events=table, items=items, users=users, meta=meta, extras=extras)
