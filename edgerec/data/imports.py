"""Your own data: `edgerec data import NAME --events PATH --map field=column ...`.

A user's log becomes an EventDataset like the bundled ones, described by a small dataset file
(`<data dir>/<NAME>/dataset.yaml`, written by the import and readable by hand):

    name: myfeed
    tz: Asia/Shanghai            # the log's local clock: hour and weekday features are local time
    time_unit: ms                # s | ms | iso (naive ISO strings are local time in tz)
    events: {path: /data/events.csv, map: {user: user_id, item: item_id, time: ts, label: clicked,
             position: pos, request: session_id, side.scroll: scroll_depth, item.category: category}}
    items:  {path: /data/items.csv, map: {id: item_id, title: name}}   # optional
    users:  {path: /data/users.csv, map: {id: user_id}}                # optional
    buckets: {price: 8}          # numeric item / user attributes: quantile buckets (training period)

Fields of `events.map` (core: user, item, time; then label or kind, optional position and request):
  user, item     the ids, any type: read as strings and mapped to dense indices 1..N (sorted), the
                 mapping kept as `id_map_user.parquet` / `id_map_item.parquet` beside the events,
                 so every run, the service and explanations speak the user's own ids
  time           unix seconds (s), milliseconds (ms) or ISO 8601 (iso)
  label          0 / 1 (also true / false);  or  kind: an event-kind column, with `click_kinds`
                 (default click) meaning label 1 and `exposure_kinds` (default exposure,
                 impression, view) label 0
  position       1-based display position;  request: a request / session id (kept as request_id)
  side.NAME      an event column kept as side feature NAME (typed, never read by a model)
  item.NAME / user.NAME   an attribute of the item / user that the events file carries inline
                 (e.g. the category on every impression): it must be constant per id
Items / users files: every column but the id becomes an attribute (`title` is the item text);
their `map` renames (`title: name` = the file's column `name` is the title).

Rows that break a rule are not imported, and none is lost silently: `rejected.csv` in the
dataset folder lists each (file row, reason, column, value), and the import summary counts them
per reason with the first example and its fix. Reasons: missing value, unparseable time, time out
of range, label not 0/1, unknown event kind, position < 1 or not an integer, exact duplicate row,
user with fewer than `min_user_events` events. Only an empty field is a missing value: 'NA',
'n/a' or 'null' are values as written. Reading is columnar (pyarrow), never a Python loop per row,
and streaming: the events file is read and checked a CSV block or a Parquet batch at a time, and
only the checked columns of each are kept for the whole-log steps (duplicates, id maps, sparse users).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from edgerec.data.schema import CORE_DOCS, EventDataset, make_events
from edgerec.errors import DataFormatError
from edgerec.features.definition import TS_MAX, cut
from edgerec.features.time import _zone

DATASET_FILE = "dataset.yaml"
EVENT_FIELDS = ("user", "item", "time", "label", "kind", "position", "request")
TIME_UNITS = ("s", "ms", "iso")
DEFAULT_CLICK_KINDS = ("click",)
DEFAULT_EXPOSURE_KINDS = ("exposure", "impression", "view")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ISO_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
_ZONED_RE = r"(Z|[+-]\d{2}:?\d{2})$"
_NUM_RE = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_HASH_BASE = 1 << 62  # ids the import never saw hash into [2^62, 2^63): never a dense index


# --------------------------------------------------------------------------------------------
# the dataset file


@dataclass
class TableFile:
    """One input file and its column map."""

    path: str
    map: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetFile:
    """What `dataset.yaml` holds (module docstring)."""

    name: str
    events: TableFile
    items: TableFile | None = None
    users: TableFile | None = None
    tz: str = "UTC"
    time_unit: str = "s"
    buckets: dict[str, int] = field(default_factory=dict)
    click_kinds: list[str] = field(default_factory=lambda: list(DEFAULT_CLICK_KINDS))
    exposure_kinds: list[str] = field(default_factory=lambda: list(DEFAULT_EXPOSURE_KINDS))
    min_user_events: int = 1

    def check(self) -> None:
        """Every rule of the file that needs no data, as one error naming the key and the fix."""
        if not _NAME_RE.match(self.name) or ":" in self.name:
            raise DataFormatError(f"dataset name {cut(self.name)}: use letters, digits, '_', '-' or '.' (at most 64), "
                                  "e.g. myfeed")
        if self.time_unit not in TIME_UNITS:
            raise DataFormatError(f"time_unit {cut(self.time_unit)}: one of {', '.join(TIME_UNITS)} "
                                  "(unix seconds, milliseconds, ISO 8601 strings)")
        try:
            _zone(self.tz)
        except ValueError as exc:
            raise DataFormatError(f"tz: {exc}") from None
        m = self.events.map
        for key in m:
            if key not in EVENT_FIELDS and not key.startswith(("side.", "item.", "user.")):
                raise DataFormatError(f"events map: unknown field {cut(key)}; fields are {', '.join(EVENT_FIELDS)}, "
                                      "side.NAME, item.NAME and user.NAME (e.g. --map user=user_id)")
        missing = [k for k in ("user", "item", "time") if k not in m]
        if missing:
            raise DataFormatError(f"events map: {missing} not mapped; name the columns, e.g. --map user=uid "
                                  "--map item=poi_id --map time=ts")
        if ("label" in m) == ("kind" in m):
            raise DataFormatError("events map: map exactly one of label (a 0/1 column) and kind (an event-kind "
                                  "column, with --click-kinds)")
        if "kind" in m and not set(self.click_kinds).isdisjoint(self.exposure_kinds):
            raise DataFormatError(f"--click-kinds and --exposure-kinds share "
                                  f"{sorted(set(self.click_kinds) & set(self.exposure_kinds))}")
        for name, n in self.buckets.items():
            if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= 1000:
                raise DataFormatError(f"buckets: {name} = {cut(n)}; the number of quantile buckets is an integer "
                                      "from 2 to 1000, e.g. --bucket price=8")
        if not isinstance(self.min_user_events, int) or self.min_user_events < 1:
            raise DataFormatError(f"min_user_events {cut(self.min_user_events)}: an integer >= 1")

    def to_dict(self) -> dict:
        d = {"name": self.name, "tz": self.tz, "time_unit": self.time_unit,
             "events": {"path": self.events.path, "map": dict(self.events.map)}}
        for key in ("items", "users"):
            t = getattr(self, key)
            if t is not None:
                d[key] = {"path": t.path, "map": dict(t.map)}
        d.update(buckets=dict(self.buckets), click_kinds=list(self.click_kinds),
                 exposure_kinds=list(self.exposure_kinds), min_user_events=self.min_user_events)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "DatasetFile":
        known = {"name", "tz", "time_unit", "events", "items", "users", "buckets", "click_kinds", "exposure_kinds",
                 "min_user_events"}
        if not isinstance(d, dict):
            raise DataFormatError(f"{source}: a dataset file is a mapping (name, tz, time_unit, events, ...)")
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataFormatError(f"{source}: unknown key(s) {unknown}; keys are {sorted(known)}")
        if "name" not in d or "events" not in d:
            raise DataFormatError(f"{source}: needs `name` and `events: {{path, map}}`")

        def table(key: str) -> TableFile | None:
            t = d.get(key)
            if t is None:
                return None
            if not isinstance(t, dict) or "path" not in t or not isinstance(t.get("map", {}), dict):
                raise DataFormatError(f"{source}: {key} must be {{path: FILE, map: {{field: column}}}}")
            return TableFile(str(t["path"]), {str(k): str(v) for k, v in (t.get("map") or {}).items()})

        for key in ("buckets",):
            if not isinstance(d.get(key) or {}, dict):
                raise DataFormatError(f"{source}: {key} must be a mapping NAME: N, e.g. {{price: 8}}")
        for key in ("click_kinds", "exposure_kinds"):
            v = d.get(key)
            if isinstance(v, str):
                d = {**d, key: [x.strip() for x in v.split(",") if x.strip()]}
            elif v is not None and not isinstance(v, list):
                raise DataFormatError(f"{source}: {key} must be a list of kinds, e.g. [click, order]")
        out = cls(name=str(d["name"]), events=table("events"), items=table("items"), users=table("users"),
                  tz=str(d.get("tz", "UTC")), time_unit=str(d.get("time_unit", "s")),
                  buckets=dict(d.get("buckets") or {}),
                  click_kinds=[str(x) for x in d.get("click_kinds", DEFAULT_CLICK_KINDS)],
                  exposure_kinds=[str(x) for x in d.get("exposure_kinds", DEFAULT_EXPOSURE_KINDS)],
                  min_user_events=d.get("min_user_events", 1))
        out.check()
        return out


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def read_dataset_file(path: str | Path) -> DatasetFile:
    import yaml

    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataFormatError(f"{path}: cannot read the dataset file: {cut(str(exc), 200)}") from None
    spec = DatasetFile.from_dict(d, str(path))
    for t in (spec.events, spec.items, spec.users):  # a relative path is relative to the dataset file
        if t is not None and not Path(t.path).is_absolute():
            t.path = str((path.parent / t.path).resolve())
    return spec


# --------------------------------------------------------------------------------------------
# reading files


def _format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".txt", "tsv"), (".parquet", "parquet"), (".pq", "parquet"),
                     (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl")):
        if name.endswith(ext):
            return fmt
    raise DataFormatError(f"{path}: unknown file type; use .csv, .tsv, .parquet or .jsonl (JSON lines)")


BLOCK_BYTES = 16 << 20  # CSV / TSV: file bytes parsed per batch (about 250k rows of a typical log)
CHECK_THREADS = 2  # batches checked at once, beside the reader
BATCH_ROWS = 1 << 20  # Parquet / JSON lines: rows per batch


class _ReadAsText(Exception):
    """A CSV column typed from the first block met a value of another type in a later block: the
    caller reads the file again with every column as text, and the checks name the row."""


def _csv_options(path: Path, columns: list[str], strings: set[str], keep_empty_lines: bool, ragged: list):
    """Arrow's parse and convert options for our CSV rules. `keep_empty_lines`: an empty line is a
    row of missing values (rejected and counted, and row numbers stay line - 1) instead of skipped.
    `ragged`: a row with the wrong number of fields is appended to it (the caller names it)."""
    delim = "," if _format(path) == "csv" else "\t"

    def on_ragged(row) -> str:
        ragged.append(row)
        return "error"

    # only an empty field is missing: Arrow's default null words ('NA', 'n/a', 'null', ...) would turn
    # a country code 'NA' into a missing value and a 'n/a' in a number column into an uncounted gap.
    # newlines_in_values: a quoted value may span lines (else the import fails or not depending on
    # where a block ends; measured at no visible cost on a 3M-row file)
    return (pacsv.ParseOptions(delimiter=delim, newlines_in_values=True, ignore_empty_lines=not keep_empty_lines,
                               invalid_row_handler=on_ragged),
            pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in strings},
                                 null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True))


def iter_file(path: str | Path, columns: list[str], strings: set[str] = frozenset(),
              keep_empty_lines: bool = False) -> Iterator[pa.Table]:
    """The named columns of a CSV / TSV / Parquet / JSON-lines file as a stream of tables (a CSV
    block, a Parquet batch), so a caller that reduces each one never holds the whole file as read.
    `strings`: columns read as text (ids: '007' stays '007'). A missing column is an error listing
    what the file has. Raises _ReadAsText when a typed CSV column changes type after its first block."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    fmt = _format(path)
    ragged: list = []  # CSV rows with the wrong number of fields, named in the error below
    try:
        if fmt == "parquet":
            f = pq.ParquetFile(path)
            _check_columns(path, columns, f.schema_arrow.names)
            yielded = False
            for b in f.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                yielded = True
                yield pa.Table.from_batches([b])
            if not yielded:
                yield f.schema_arrow.empty_table().select(columns)
        elif fmt == "jsonl":  # pyarrow has no streaming JSON reader: read whole, hand out in batches
            import pyarrow.json as pajson

            t = pajson.read_json(path)
            _check_columns(path, columns, t.column_names)
            t = t.select(columns)
            for lo in range(0, max(t.num_rows, 1), BATCH_ROWS):
                yield t.slice(lo, BATCH_ROWS)
        else:
            parse, convert = _csv_options(path, columns, strings, keep_empty_lines, ragged)
            _check_columns(path, columns, _csv_header(path, parse.delimiter))
            with pacsv.open_csv(path, parse_options=parse, convert_options=convert,
                                read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES)) as reader:
                yielded = False
                while True:
                    try:
                        b = reader.read_next_batch()
                    except StopIteration:
                        break
                    yielded = True
                    yield pa.Table.from_batches([b])
                if not yielded:
                    yield reader.schema.empty_table()
    except pa.ArrowInvalid as exc:
        if ragged:
            r = ragged[0]
            where = f"line {r.number}" if r.number is not None else "a row"
            raise DataFormatError(f"{path}: {where} has {r.actual_columns} fields, the header {r.expected_columns}: "
                                  f"{cut(r.text, 120)}. Quote a value that holds the delimiter, or fix the "
                                  "row") from None
        if fmt in ("csv", "tsv") and "conversion error" in str(exc).lower() and set(columns) - set(strings):
            raise _ReadAsText() from None  # a typed column with one bad value: read it as text, the checks name the row
        raise DataFormatError(f"{path}: cannot read it as {fmt}: {cut(str(exc), 300)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read it: {cut(str(exc), 300)}") from None


def read_file(path: str | Path, columns: list[str], strings: set[str] = frozenset()) -> pa.Table:
    """The whole of `iter_file` as one table (chunks kept): for the small files (items, users,
    texts, rows to score); the events file is checked batch by batch instead."""
    try:
        return pa.concat_tables(iter_file(path, columns, strings))
    except _ReadAsText:
        return pa.concat_tables(iter_file(path, columns, set(columns)))


def _check_columns(path: Path, want: list[str], have: list[str]) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise DataFormatError(f"{path}: no column(s) {missing}; the file has {cut(have, 300)}. Fix the --map "
                              "(field=COLUMN, COLUMN as spelled in the file's header)")


# --------------------------------------------------------------------------------------------
# rejections: every dropped row is counted and written, never lost


FIXES = {
    "missing value": "fill the value or remove the row",
    "unparseable time": "write unix seconds (--time-unit s), milliseconds (ms) or ISO 8601 like 2024-07-01T12:00:00 (iso)",
    "time out of range": "times must lie in 1970..2100; check --time-unit (milliseconds read as seconds?)",
    "label not 0/1": "labels are 0 (shown, not clicked) or 1 (clicked); map an event-kind column as kind= instead",
    "unknown event kind": "add the kind to --click-kinds or --exposure-kinds",
    "bad position": "positions are integers >= 1 (1 = top of the feed); leave it empty when unknown",
    "duplicate row": "the same (user, item, time, label, position, request) twice: kept once",
    "too few events": "users below --min-user-events are dropped; lower it to keep them",
}


class Rejects:
    """Rows that break a rule: (row, reason, column, value), collected columnar per check."""

    def __init__(self, source: str, header_lines: int | None = 1):
        self.source = source
        self.header_lines = header_lines  # CSV / TSV: 1 (line = row + 1); JSON lines: 0; Parquet: None (no lines)
        self.parts: list[pa.Table] = []

    def add(self, bad: pa.Array, row: pa.Array, reason: str, column: str, values: pa.Array | None) -> None:
        """Record rows where boolean mask `bad` is True."""
        bad = pc.fill_null(bad, False)
        if not pc.any(bad).as_py():
            return
        rows = pc.filter(row, bad)
        vals = pc.cast(pc.filter(values, bad), pa.string()) if values is not None else pa.nulls(len(rows), pa.string())
        self.parts.append(pa.table({"row": rows, "reason": pa.array([reason] * len(rows)),
                                    "column": pa.array([column] * len(rows)), "value": vals}))

    def table(self) -> pa.Table:
        if not self.parts:
            return pa.table({"row": pa.array([], pa.int64()), "reason": pa.array([], pa.string()),
                             "column": pa.array([], pa.string()), "value": pa.array([], pa.string())})
        return pa.concat_tables(self.parts).sort_by([("row", "ascending")])

    def summary(self) -> dict:
        t = self.table()
        out = {}
        for reason in dict.fromkeys(t.column("reason").to_pylist()):
            sub = t.filter(pc.equal(t.column("reason"), reason))
            first = sub.slice(0, 1).to_pylist()[0]
            line = f" (line {first['row'] + self.header_lines})" if self.header_lines is not None else ""
            out[reason] = {"rows": len(pc.unique(sub.column("row"))),  # a row missing 3 fields is one row
                           "first": f"{self.source}: row {first['row']}{line}, column "
                                    f"{first['column']!r}, value {cut(first['value'], 60)}",
                           "fix": FIXES[reason]}
        return out


# --------------------------------------------------------------------------------------------
# conversions (vectorized; each returns values and a mask of rows it could not read)


def _value(col) -> pa.Array:
    """A column with its text trimmed (' cafe' is 'cafe'), anything else as it is; chunks kept
    (combining a 10M-row column would copy it). When no value had white space around it the original
    is returned and the trimmed copy dropped at once, so an id column is not held twice for nothing."""
    if not _is_text(col.type):
        return col
    trimmed = pc.utf8_trim_whitespace(col)
    same = pc.sum(pc.binary_length(trimmed)).as_py() == pc.sum(pc.binary_length(col)).as_py()
    return col if same else trimmed


def _text(col) -> pa.Array:
    """A column as trimmed text (ids are text: '007' stays '007'); a float id column (pandas writes
    ints with a missing value as 7.0) reads '7'."""
    arr = _value(col)
    if _is_text(arr.type):
        return arr
    if pa.types.is_floating(arr.type):
        integral = pc.fill_null(pc.equal(pc.floor(arr), arr), True)
        return pc.if_else(integral, pc.cast(pc.cast(arr, pa.int64(), safe=False), pa.string()), pc.cast(arr, pa.string()))
    return pc.cast(arr, pa.string())


def _missing(arr) -> pa.Array:
    """The value was not given: null, or empty text after trimming (dictionary and binary columns,
    as some Parquet writers produce, are read as text for this)."""
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_timestamp(t):
        return pc.is_null(arr)
    return _empty(_text(arr))


def _fold_clicks(good: pa.Table, by_request: bool) -> tuple[pa.Table, int]:
    """A log of event KINDS has a row for the exposure and another for its click: the click is folded
    into its exposure (same user, item and request; that exposure becomes label 1, the click row goes),
    so one impression is one sample, not a negative and a positive. A click without a matching
    exposure (or without a request column to match on) stays an event of its own. -> (table, folded)."""
    if not by_request:
        return good, 0
    keys = ["uid", "iid", "request"]
    label = good.column("label")
    clicks = good.filter(pc.equal(label, 1)).select(keys + ["row"])
    expos = good.filter(pc.equal(label, 0)).select(keys + ["row"])
    if not clicks.num_rows or not expos.num_rows:
        return good, 0
    first_expo = expos.group_by(keys).aggregate([("row", "min")])
    first_click = clicks.group_by(keys).aggregate([("row", "min")])
    pair = first_expo.join(first_click, keys, join_type="inner", left_suffix="_e", right_suffix="_c")
    if not pair.num_rows:
        return good, 0
    e_rows, c_rows = pair.column("row_min_e"), pair.column("row_min_c")
    row = good.column("row")
    good = good.set_column(good.column_names.index("label"), "label",
                           pc.if_else(pc.is_in(row, e_rows), pa.scalar(1, pa.int8()), label))
    return good.filter(pc.invert(pc.is_in(row, c_rows))), len(c_rows)


def _with_every_id(table: pa.Table | None, key: str, n: int) -> pa.Table:
    """The attribute table with a row (nulls) for every index 1..n it lacks."""
    ids = pa.array(np.arange(1, n + 1, dtype=np.int64))
    if table is None:
        return pa.table({key: ids})
    missing = pc.filter(ids, pc.invert(pc.is_in(ids, table.column(key))))
    if not len(missing):
        return table
    extra = pa.table({c: (missing if c == key else pa.nulls(len(missing), table.schema.field(c).type))
                      for c in table.column_names})
    return pa.concat_tables([table, extra]).sort_by(key)


def _chunks(*cols) -> pa.Array:
    """Columns (Array or ChunkedArray, None skipped) as one Array, without a Python loop over values."""
    parts = [c for col in cols if col is not None for c in (col.chunks if isinstance(col, pa.ChunkedArray) else [col])]
    return pa.chunked_array(parts).combine_chunks()


def _codes(arr) -> pa.Array:
    """Dense integer codes of a column's distinct values (hash-encoded, in order of appearance)."""
    enc = pc.dictionary_encode(arr)
    enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
    return pc.cast(enc.indices, pa.int64())


def _empty(text: pa.Array) -> pa.Array:
    return pc.or_kleene(pc.is_null(text), pc.equal(text, ""))


def _arrow_zone(tz: str) -> str:
    """Our zone spelling as Arrow's: a fixed offset 'UTC+8' is '+08:00'; IANA names are the same."""
    z = _zone(tz)
    if isinstance(z, dt.timezone):
        minutes = int(z.utcoffset(None).total_seconds()) // 60
        return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return tz


def parse_time(arr, unit: str, tz: str) -> tuple[pa.Array, pa.Array, pa.Array]:
    """-> (unix seconds int64 with nulls, unparseable mask, out-of-range mask)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    tz = _arrow_zone(tz)
    if pa.types.is_timestamp(arr.type):  # Parquet timestamps: zoned are instants, naive are local time
        t = arr if arr.type.tz else pc.assume_timezone(arr, tz, ambiguous="earliest", nonexistent="earliest")
        secs = pc.divide(pc.cast(pc.cast(t, pa.timestamp("us", tz="UTC")), pa.int64()), 1_000_000)
        bad = pa.array(np.zeros(len(arr), bool))
    elif unit == "iso":
        text = _text(arr)
        ok = pc.fill_null(pc.match_substring_regex(text, _ISO_RE), False)
        zoned = pc.and_(ok, pc.fill_null(pc.match_substring_regex(text, _ZONED_RE), False))
        naive = pc.and_(ok, pc.invert(zoned))
        secs = pa.nulls(len(text), pa.int64())
        for mask, parse in ((naive, lambda x: pc.assume_timezone(pc.cast(x, pa.timestamp("us")), tz, ambiguous="earliest",
                                                                  nonexistent="earliest")),
                            (zoned, lambda x: pc.cast(x, pa.timestamp("us", tz="UTC")))):
            if not pc.any(mask).as_py():
                continue
            sub = pc.if_else(mask, text, pa.scalar(None, pa.string()))
            try:
                us = pc.cast(parse(sub), pa.int64())
            except pa.ArrowInvalid:  # a well-formed but impossible date (2024-13-01): find it by halving
                us = _parse_halving(sub, parse)
            secs = pc.if_else(mask, pc.divide(us, 1_000_000), secs)
        bad = pc.and_(pc.invert(_empty(text)), pc.is_null(secs))
    elif pa.types.is_integer(arr.type):  # integer seconds / ms: integer arithmetic, no float pass
        secs = pc.cast(arr, pa.int64())
        if unit == "ms":  # a negative time stays negative (out of range), not truncated to 0
            secs = pc.if_else(pc.less(secs, 0), pa.scalar(-1, pa.int64()), pc.divide(secs, 1000))
        huge = pc.fill_null(pc.greater_equal(pc.abs(secs), 10 ** 15), False)  # as the float path: not a time at all
        secs = pc.if_else(huge, pa.scalar(None, pa.int64()), secs)
        bad = huge
    else:
        if pa.types.is_floating(arr.type):
            num = pc.cast(arr, pa.float64())
        else:
            text = _text(arr)
            ok = pc.fill_null(pc.match_substring_regex(text, _NUM_RE), False)
            num = pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64())
        if unit == "ms":
            num = pc.divide(num, 1000.0)
        finite = pc.fill_null(pc.is_finite(num), False)
        num = pc.if_else(finite, num, pa.scalar(None, pa.float64()))
        secs = pc.cast(pc.floor(pc.if_else(pc.less(pc.abs(num), 1e15), num, pa.scalar(None, pa.float64()))), pa.int64())
        bad = pc.and_(pc.invert(_missing(arr)), pc.is_null(secs))
    secs = pc.cast(secs, pa.int64())
    out = pc.fill_null(pc.or_(pc.less(secs, 0), pc.greater(secs, TS_MAX)), False)
    return secs, pc.fill_null(bad, False), out


def _parse_halving(text: pa.Array, parse) -> pa.Array:
    """`parse` (text -> timestamps) as int64 microseconds, null where a value cannot be read: a failing
    half is split again, so k bad values cost about k * log2(n) vectorized casts, not a Python call
    per row (one impossible date in a 250k-row block was 29 s row by row)."""
    try:
        return pc.cast(parse(text), pa.int64())
    except pa.ArrowInvalid:
        if len(text) == 1:
            return pa.nulls(1, pa.int64())
        half = len(text) // 2
        return pa.concat_arrays([_parse_halving(text.slice(0, half), parse),
                                 _parse_halving(text.slice(half), parse)])


def parse_label(arr) -> tuple[pa.Array, pa.Array]:
    """0/1 (text: also true/false, 0.0/1.0; a typed Parquet / JSON column by its value) -> (int8 with nulls, bad mask)."""
    if pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        num = pc.cast(arr, pa.float64())
        label = pc.if_else(pc.equal(num, 1.0), pa.scalar(1, pa.int8()),
                           pc.if_else(pc.equal(num, 0.0), pa.scalar(0, pa.int8()), pa.scalar(None, pa.int8())))
        return label, pc.and_(pc.is_valid(arr), pc.is_null(label))
    text = pc.utf8_lower(_text(arr))
    ones = pc.is_in(text, pa.array(["1", "1.0", "true"]))
    zeros = pc.is_in(text, pa.array(["0", "0.0", "false"]))
    label = pc.if_else(ones, pa.scalar(1, pa.int8()), pc.if_else(zeros, pa.scalar(0, pa.int8()),
                                                                  pa.scalar(None, pa.int8())))
    return label, pc.and_(pc.invert(_empty(text)), pc.is_null(label))


def parse_position(arr) -> tuple[pa.Array, pa.Array]:
    """1-based integers up to 9999 (text as written, '+3' and '3.0' allowed; a typed Parquet / JSON
    column by its value) -> (int16 with nulls for empty, bad mask)."""
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        num = pc.cast(arr, pa.float64())
        ok = pc.and_(pc.and_(pc.greater_equal(num, 1.0), pc.less_equal(num, 9999.0)), pc.equal(pc.floor(num), num))
        ok = pc.fill_null(ok, False)
        pos = pc.if_else(ok, pc.cast(pc.if_else(ok, num, pa.scalar(1.0)), pa.int16()), pa.scalar(None, pa.int16()))
        return pos, pc.and_(pc.is_valid(arr), pc.invert(ok))
    text = _text(arr)
    ok = pc.fill_null(pc.match_substring_regex(text, r"^\+?\d{1,4}(\.0*)?$"), False)
    pos = pc.cast(pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64()), pa.int16())
    ok = pc.and_(ok, pc.fill_null(pc.greater_equal(pos, 1), False))
    return pc.if_else(ok, pos, pa.scalar(None, pa.int16())), pc.and_(pc.invert(_empty(text)), pc.invert(ok))


# --------------------------------------------------------------------------------------------
# ids: the user's strings <-> dense indices


class IdMap:
    """A dataset's id mapping: the user's id strings, sorted, are indices 1..N. An id the import
    never saw (a new user at serving, a new item in the stream) gets a stable hashed index in
    [2^62, 2^63), the same in every process, so its events still build one history; no run's
    vocabulary contains it (cold start, edgerec.features.spec)."""

    def __init__(self, ids: pa.Array):
        self.ids = ids  # sorted unique strings; index i + 1 <-> ids[i]
        self._index: dict[str, int] | None = None  # built on the first single lookup (serving)

    @classmethod
    def fit(cls, text: pa.Array) -> "IdMap":
        return cls(pc.unique(text).sort())

    @classmethod
    def from_table(cls, t: pa.Table) -> "IdMap":
        return cls(t.column("id").combine_chunks())

    def table(self) -> pa.Table:
        return pa.table({"index": pa.array(np.arange(1, len(self.ids) + 1, dtype=np.int64)), "id": self.ids})

    def encode_array(self, text: pa.Array) -> pa.Array:
        """Known ids -> dense index (int64); unknown -> null."""
        return pc.add(pc.cast(pc.index_in(text, value_set=self.ids), pa.int64()), 1)

    def encode(self, raw) -> int:
        """One id (str or int, as the user writes it) -> its index; unseen ids hash (class doc)."""
        key = str(raw).strip()
        if not key:
            raise ValueError("an id is empty (or only white space)")
        if self._index is None:
            self._index = {s: i + 1 for i, s in enumerate(self.ids.to_pylist())}
        at = self._index.get(key)
        if at is None:
            h = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
            at = _HASH_BASE + h % _HASH_BASE
        return at

    def decode(self, index: np.ndarray) -> list[str | None]:
        """Dense indices -> the user's ids (None for an index that is not a known id)."""
        index = np.asarray(index, dtype=np.int64)
        ok = (index >= 1) & (index <= len(self.ids))
        taken = self.ids.take(pa.array(np.where(ok, index - 1, 0))).to_pylist()
        return [v if o else None for v, o in zip(taken, ok)]


# --------------------------------------------------------------------------------------------
# the import


def _constant_per_id(key: pa.Array, values: pa.Array, where: str, kind: str, name: str) -> pa.Table:
    """Inline attribute (one value per event) -> one row per id; a second value for an id is an error."""
    t = pa.table({"k": key, "v": values}).group_by(["k", "v"]).aggregate([]).sort_by("k")
    k = t.column("k").to_numpy(zero_copy_only=False)
    dup = np.flatnonzero(k[1:] == k[:-1])
    if len(dup):
        i = int(dup[0])
        raise DataFormatError(
            f"{where}: {kind}.{name}: {kind} {t.column('k')[i].as_py()!r} has two values "
            f"({cut(t.column('v')[i].as_py(), 40)} and {cut(t.column('v')[i + 1].as_py(), 40)}); an inline {kind} "
            f"attribute must be constant per {kind}. Map the column as side.{name} (an event feature) instead, "
            f"or give a --{kind}s file")
    return t.rename_columns([f"{kind}_id", name])


def _attribute_table(path: Path, tf: TableFile, kind: str, default_id: str, buckets: dict[str, int]) -> pa.Table:
    """An items / users file -> (kind_id: the id as text, attributes...). Its id column is
    `map.id`, else the events' column of that id (`default_id`). Attributes are read as text
    (a code '007' stays '007') except those to bucket (`buckets`, by their new name)."""
    id_col = tf.map.get("id", default_id)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    have = _all_columns(path)
    rename = {v: k for k, v in tf.map.items() if k != "id"}
    missing = [f"{kind}s.{k}={v}" for k, v in tf.map.items() if v not in have]
    if missing:
        raise DataFormatError(f"{path}: --map {', '.join(missing)}: no such column; the file has {cut(have, 300)}")
    text = {c for c in have if rename.get(c, c) not in buckets}
    t = read_file(path, [id_col] + [c for c in have if c != id_col], strings=text | {id_col})
    text = _text(t.column(id_col))
    if pc.any(_empty(text)).as_py():
        row = int(pc.index(_empty(text), True).as_py())
        raise DataFormatError(f"{path}: row {row + 1} (line {row + 2}), column {id_col!r}: the {kind} id is empty")
    counts = pa.table({"k": text}).group_by("k").aggregate([("k", "count")])
    many = counts.filter(pc.greater(counts.column("k_count"), 1))
    if many.num_rows:
        raise DataFormatError(f"{path}: {kind} id {cut(many.column('k')[0].as_py())} appears "
                              f"{many.column('k_count')[0].as_py()} times; one row per {kind}")
    cols = {f"{kind}_id": text}
    for c in t.column_names:
        if c != id_col:
            cols[rename.get(c, c)] = t.column(c).combine_chunks()
    return pa.table(cols)


def _all_columns(path: Path) -> list[str]:
    fmt = _format(path)
    if fmt == "parquet":
        return pq.read_schema(path).names
    if fmt == "jsonl":
        import pyarrow.json as pajson

        return pajson.read_json(path).column_names
    return _csv_header(path, "," if fmt == "csv" else "\t")


def _csv_header(path: Path, delim: str) -> list[str]:
    """The column names of a delimited file (quoted or not), from its first line only: a bad row
    further down is the reader's to name, with its line."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first name
            header = next(csv.reader(f, delimiter=delim), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(f"{path}: cannot read its header line: {cut(str(exc), 200)}") from None
    if not header:
        raise DataFormatError(f"{path}: the file is empty or starts with an empty line; its first line must be "
                              "the header (column names)")
    return header


def _looks_continuous(col) -> bool:
    """Text whose values are at least 90 % decimal numbers, some with a fraction (a price, a depth):
    a model would see one category per value. Integers ('3', '007') stay categories. The share, not
    all: one stray 'cheap' among prices must not turn the column into 48 silent categories."""
    if not _is_text(col.type):
        return False
    vals = pc.drop_null(col)
    if not len(vals):
        return False
    numeric = pc.match_substring_regex(vals, _NUM_RE)
    if pc.sum(numeric).as_py() < 0.9 * len(vals):
        return False
    return bool(pc.any(pc.and_(numeric, pc.match_substring(vals, "."))).as_py())


def _where(tf: "TableFile | None", default: str) -> str:
    """The attribute file's path for a message (attributes mapped from the events have none)."""
    return tf.path if tf is not None else default


def _first_non_number(table: pa.Table, key: str, name: str, ids: "IdMap") -> tuple[str, str] | None:
    """(the user's id, value) of the first row whose `name` is text that is not a number, else None."""
    col = table.column(name)
    if not _is_text(col.type):
        return None
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(col, _NUM_RE), True))
    if not pc.any(bad).as_py():
        return None
    at = int(pc.index(bad, True).as_py())
    return str(ids.decode([table.column(key)[at].as_py()])[0]), str(col[at].as_py())


def _numbers_read_as_text(table: pa.Table | None, buckets: dict[str, int]) -> pa.Table | None:
    """Columns to bucket that came in as text (a file re-read as text because another column held
    a bad value) and hold only numbers: as float64. One that does not stays text and is named below."""
    if table is None:
        return None
    for name in (n for n in buckets if n in table.column_names):
        col = table.column(name)
        if _is_text(col.type) and pc.all(pc.fill_null(pc.match_substring_regex(col, _NUM_RE), True)).as_py():
            table = table.set_column(table.column_names.index(name), name,
                                     pc.cast(pc.utf8_trim_whitespace(col), pa.float64()))
    return table


def _check_attribute_types(table: pa.Table, key: str, kind: str, buckets: dict[str, int], where: str,
                           ids: "IdMap") -> dict:
    """Attribute docs; a float attribute without a bucket count is refused (never silently cast)."""
    docs = {}
    for f in table.schema:
        if f.name == key:
            continue
        stray = _first_non_number(table, key, f.name, ids)
        if f.name in buckets:
            if stray is not None:
                raise DataFormatError(f"{where}: {kind} {cut(stray[0])}: {f.name} is {cut(stray[1])}, not a number, so "
                                      f"{f.name} cannot be bucketed; fix that value (leave it empty if unknown) or "
                                      f"drop `--bucket {f.name}=...` if the column is really text")
            if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)):
                raise DataFormatError(f"{where}: {kind} attribute {f.name!r} is {f.type}, not numeric: it cannot be "
                                      f"bucketed; drop `--bucket {f.name}=...` (text is a category)")
            # counted over every id: a users file need not list every user of the events
            every = max(len(ids.ids), table.num_rows)
            gaps = every - (table.num_rows - table.column(f.name).null_count)
            docs[f.name] = (f"numeric, {buckets[f.name]} quantile buckets fit on the training period's {kind}s; "
                            f"{gaps:,} of {every:,} {kind}s without a value (index 0, as unknown)")
        elif pa.types.is_floating(f.type) or _looks_continuous(table.column(f.name)):
            odd = f"; and {kind} {cut(stray[0])} has {cut(stray[1])}, not a number: fix it" if stray else ""
            raise DataFormatError(f"{where}: {kind} attribute {f.name!r} is numeric ({f.type}); a model reads "
                                  f"categories, so bucket it (--bucket {f.name}=8: quantile boundaries fit on the "
                                  f"training period) or leave the column out{odd}")
        elif f.name == "title" and kind == "item":
            docs[f.name] = "text (the item title: compress's item-title task)"
        else:
            docs[f.name] = f"categorical ({f.type})"
    return docs


_SECONDS_AS_MS = 100_000_000  # 1973-03-03 in seconds: unix seconds of 1973-2100 read as ms all fall before it


def _check_plausible_ms(secs, spec: DatasetFile, path: Path) -> None:
    """Seconds read as milliseconds land in early 1970 and parse without error: refuse a log whose
    median time, read as milliseconds, falls before March 1973 (the opposite mistake is out of range;
    a real millisecond log of the 1990s, like MovieLens's, passes)."""
    if spec.time_unit != "ms":
        return
    t = pc.drop_null(secs)
    if len(t) and pc.approximate_median(t).as_py() < _SECONDS_AS_MS:
        first = pc.min(t).as_py()
        raise DataFormatError(f"{path}: column {spec.events.map['time']!r} read as milliseconds puts the log in "
                              f"{time.strftime('%Y-%m', time.gmtime(first))}: these look like unix seconds; "
                              "set time_unit: s (--time-unit s)")


def _checked_events(spec: DatasetFile, rej: Rejects) -> tuple[pa.Table, int]:
    """Read the events file batch by batch and run every per-row check on each batch; rejected rows
    go to `rej`. -> (the rows that passed, with columns user, item (text), ts, label, position, row,
    [request], side.*, item.* / user.* inline and time_raw (the time as written, for the duplicate
    check); rows read). Only the checked columns of each batch are kept, so the import never holds
    the file as read beside its checked copy; the whole-log steps (duplicates, id maps, sparse users)
    run on the result."""
    m = spec.events.map
    want = list(dict.fromkeys(m.values()))
    # CSV: every column text (the checks below apply one rule to every row, as written) except the
    # time, which Arrow parses, and numbers to bucket (a bad value makes the file read as text)
    typed = {m["time"]} | {m[k] for k in m if k.startswith(("item.", "user.")) and k.split(".", 1)[1] in spec.buckets}
    try:
        return _check_batches(spec, rej, iter_file(spec.events.path, want, strings=set(want) - typed,
                                                   keep_empty_lines=True))
    except _ReadAsText:
        rej.parts.clear()
        return _check_batches(spec, rej, iter_file(spec.events.path, want, strings=set(want),
                                                   keep_empty_lines=True))


def _check_batches(spec: DatasetFile, rej: Rejects, batches: Iterator[pa.Table]) -> tuple[pa.Table, int]:
    """Check the batches on CHECK_THREADS threads while the next one is read (Arrow's kernels release
    the GIL), at most CHECK_THREADS + 1 batches held at once; the checked batches keep file order."""
    from concurrent.futures import ThreadPoolExecutor

    kept, pending, n_read = [], [], 0
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        for raw in batches:
            pending.append(pool.submit(_check_batch, spec, rej, raw, n_read))
            n_read += raw.num_rows
            del raw
            if len(pending) > CHECK_THREADS:
                kept.append(pending.pop(0).result())
        kept += [f.result() for f in pending]
    good = pa.concat_tables(kept)
    _check_plausible_ms(good.column("ts"), spec, Path(spec.events.path))
    return good, n_read


def _check_batch(spec: DatasetFile, rej: Rejects, raw: pa.Table, first_row: int) -> pa.Table:
    """The per-row checks of one batch whose first row is data row `first_row` + 1."""
    m = spec.events.map
    n = raw.num_rows
    row = pa.array(np.arange(first_row + 1, first_row + n + 1, dtype=np.int64))  # 1-based data row (line = row + 1)
    user_t, item_t = _text(raw.column(m["user"])), _text(raw.column(m["item"]))
    no_user, no_item = _empty(user_t), _empty(item_t)
    rej.add(no_user, row, "missing value", m["user"], user_t)
    rej.add(no_item, row, "missing value", m["item"], item_t)
    time_raw = _value(raw.column(m["time"]))
    if pa.types.is_timestamp(time_raw.type) and spec.time_unit != "iso" and _format(Path(spec.events.path)) in ("csv", "tsv"):
        raise DataFormatError(f"{spec.events.path}: column {m['time']!r} holds date-time text (e.g. "
                              f"{pc.drop_null(time_raw)[0]}), not unix {'seconds' if spec.time_unit == 's' else 'milliseconds'}; "
                              "set time_unit: iso (--time-unit iso)")
    secs, bad_t, out_t = parse_time(time_raw, spec.time_unit, spec.tz)
    rej.add(_missing(time_raw), row, "missing value", m["time"], time_raw)
    rej.add(bad_t, row, "unparseable time", m["time"], time_raw)
    rej.add(out_t, row, "time out of range", m["time"], time_raw)
    if "label" in m:
        lv = _value(raw.column(m["label"]))
        label, bad_l = parse_label(lv)
        rej.add(_missing(lv), row, "missing value", m["label"], lv)
        rej.add(bad_l, row, "label not 0/1", m["label"], lv)
    else:
        kt = _text(raw.column(m["kind"]))
        click = pc.is_in(kt, pa.array(spec.click_kinds, pa.string()))
        expo = pc.is_in(kt, pa.array(spec.exposure_kinds, pa.string()))
        label = pc.if_else(click, pa.scalar(1, pa.int8()), pc.if_else(expo, pa.scalar(0, pa.int8()),
                                                                      pa.scalar(None, pa.int8())))
        no_kind = _empty(kt)
        rej.add(no_kind, row, "missing value", m["kind"], kt)
        rej.add(pc.and_(pc.invert(no_kind), pc.is_null(label)), row, "unknown event kind", m["kind"], kt)
    keep = pc.invert(pc.or_(pc.or_(pc.or_(no_user, no_item), pc.is_null(secs)),
                            pc.or_(out_t, pc.is_null(label))))
    if "position" in m:
        pv = _value(raw.column(m["position"]))
        position, bad_p = parse_position(pv)
        rej.add(bad_p, row, "bad position", m["position"], pv)
        keep = pc.and_(keep, pc.invert(bad_p))
    else:
        position = pa.nulls(n, pa.int16())
    cols = {"user": user_t, "item": item_t, "ts": secs, "label": label, "position": position, "row": row}
    if "request" in m:
        cols["request"] = _text(raw.column(m["request"]))
    cols.update({k: _value(raw.column(v)) for k, v in m.items() if k.startswith(("side.", "item.", "user."))})
    cols["time_raw"] = time_raw
    good = pa.table(cols)
    keep = pc.fill_null(keep, False)
    return good if pc.all(keep).as_py() else good.filter(keep)


_MIX_U, _MIX_I = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)


def _drop_duplicates(good: pa.Table, rej: Rejects) -> pa.Table:
    """Exact duplicates: every mapped column equal, the time as written (not cut to the second); the
    first copy is kept. Two copies share (user, item, second), so a sort of a 64-bit mix of those three
    finds the candidates (a collision of the mix only adds a candidate) and only the candidates are
    compared in full: a sort of one integer column instead of a group-by over every column."""
    if good.num_rows < 2:
        return good
    u = good.column("uid").to_numpy().astype(np.uint64)  # dense ids: no second hash of the id strings
    i = good.column("iid").to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        mix = (u * _MIX_U) ^ (i * _MIX_I) ^ good.column("ts").to_numpy().astype(np.uint64)  # (rows,)
    del u, i
    s = np.sort(mix)
    shared = s[1:][s[1:] == s[:-1]]
    if not len(shared):
        return good
    shared = np.unique(shared)  # small: the mixes seen twice or more
    at = np.minimum(np.searchsorted(shared, mix), len(shared) - 1)
    sub = good.filter(pa.array(shared[at] == mix))  # the candidates (np.isin would sort all rows again)
    key = {f"k{j}": _codes(sub.column(c)) for j, c in enumerate(c for c in sub.column_names if c not in ("ts", "row", "uid", "iid"))}
    key["row"] = sub.column("row")
    firsts = pa.table(key).group_by([k for k in key if k != "row"]).aggregate([("row", "min")]).column("row_min")
    if len(firsts) == sub.num_rows:
        return good
    later = pc.invert(pc.is_in(sub.column("row"), firsts))
    rej.add(later, sub.column("row"), "duplicate row", "(whole row)", None)
    return good.filter(pc.invert(pc.is_in(good.column("row"), pc.filter(sub.column("row"), later))))


def _drop_sparse_users(good: pa.Table, min_events: int, user_column: str, rej: Rejects) -> pa.Table:
    """Users with fewer than `min_events` events are dropped (and counted)."""
    if min_events <= 1:
        return good
    per = good.group_by("uid").aggregate([("uid", "count")])
    few = per.filter(pc.less(per.column("uid_count"), min_events)).column("uid")
    drop = pc.is_in(good.column("uid"), few)
    rej.add(drop, good.column("row"), "too few events", user_column, good.column("user"))
    return good.filter(pc.invert(drop))


def _attribute_files(spec: DatasetFile) -> tuple[pa.Table | None, pa.Table | None]:
    """The items and users files (ids still text), or None where the dataset file names none."""
    m = spec.events.map
    items_t = users_t = None
    if spec.items is not None:
        items_t = _attribute_table(Path(spec.items.path), spec.items, "item", m["item"], spec.buckets)
    if spec.users is not None:
        users_t = _attribute_table(Path(spec.users.path), spec.users, "user", m["user"], spec.buckets)
    return items_t, users_t


def _with_dense_ids(good: pa.Table, items_t: pa.Table | None, users_t: pa.Table | None) -> tuple[pa.Table, IdMap, IdMap]:
    """Fit the id maps on the events' ids and the files' ids; add the dense `uid` / `iid` columns,
    which the later steps (duplicates, sparse users, the events table) use instead of the strings."""
    user_map = IdMap.fit(_chunks(good.column("user"), users_t.column("user_id") if users_t else None))
    item_map = IdMap.fit(_chunks(good.column("item"), items_t.column("item_id") if items_t else None))
    good = _drop_columns(good, ("uid", "iid"))
    good = good.append_column("uid", user_map.encode_array(good.column("user")))
    return good.append_column("iid", item_map.encode_array(good.column("item"))), user_map, item_map


def _drop_columns(t: pa.Table, names) -> pa.Table:
    return t.drop_columns([c for c in names if c in t.column_names])


def _attributes(good: pa.Table, spec: DatasetFile, user_map: IdMap, item_map: IdMap, items_t: pa.Table | None,
                users_t: pa.Table | None) -> tuple[pa.Table, pa.Table | None, dict, dict]:
    """The attribute tables keyed by dense index, inline attributes (item.* / user.* of the events)
    joined in, every event item in the catalogue. -> (items, users, item docs, user docs)."""
    ev_path = Path(spec.events.path)
    for kind, idmap, table in (("item", item_map, items_t), ("user", user_map, users_t)):
        attrs = None
        for c in (c for c in good.column_names if c.startswith(f"{kind}.")):
            a = _constant_per_id(good.column(kind).combine_chunks(), good.column(c).combine_chunks(), str(ev_path),
                                 kind, c.split(".", 1)[1])  # checked on the user's ids: the message names his id
            a = a.set_column(0, f"{kind}_id", idmap.encode_array(a.column(0).combine_chunks()))
            attrs = a if attrs is None else attrs.join(a, f"{kind}_id")
        if table is not None:
            table = table.set_column(0, f"{kind}_id", idmap.encode_array(table.column(f"{kind}_id").combine_chunks()))
            if attrs is not None:
                clash = [c for c in attrs.column_names[1:] if c in table.column_names]
                if clash:
                    raise DataFormatError(f"{kind} attribute(s) {clash} come both from the events (--map {kind}.NAME) "
                                          f"and from the {kind}s file; keep one")
                table = table.join(attrs, f"{kind}_id", join_type="full outer")
        else:
            table = attrs
        if table is not None:
            table = table.sort_by(f"{kind}_id")
        if kind == "item":
            items_t = table
        else:
            users_t = table
    items_t = _with_every_id(items_t, "item_id", len(item_map.ids))  # the catalogue holds every event item
    items_t, users_t = _numbers_read_as_text(items_t, spec.buckets), _numbers_read_as_text(users_t, spec.buckets)
    item_docs = _check_attribute_types(items_t, "item_id", "item", spec.buckets, _where(spec.items, "items"),
                                       item_map) if items_t else {}
    user_docs = _check_attribute_types(users_t, "user_id", "user", spec.buckets, _where(spec.users, "users"),
                                       user_map) if users_t else {}
    unknown_b = sorted(set(spec.buckets) - set(item_docs) - set(user_docs))
    if unknown_b:
        raise DataFormatError(f"--bucket {unknown_b}: no such item or user attribute; attributes are "
                              f"{sorted(item_docs) + sorted(user_docs)}")
    return items_t, users_t, item_docs, user_docs


def _event_table(good: pa.Table, spec: DatasetFile) -> tuple[pa.Table, dict]:
    """The checked rows as an events table (dense ids, file order as the bundled sets keep theirs).
    -> (events, side docs)."""
    m = spec.events.map
    columns = {"user_id": good.column("uid"), "item_id": good.column("iid"),
               **{c: good.column(c) for c in ("ts", "label", "position")}}
    side_docs = {}
    if "request" in m:
        columns["request_id"] = pc.add(_codes(good.column("request")), 1)  # one hash pass; null stays null
        side_docs["request_id"] = (f"int64, request / session id (column {m['request']!r}, mapped to 1..N in order "
                                   "of first appearance)")
    for key in (k for k in m if k.startswith("side.")):
        name = key.split(".", 1)[1]
        columns[name] = good.column(key)
        side_docs[name] = f"{columns[name].type}, event side feature (column {m[key]!r})"
    return make_events(columns), side_docs


def import_dataset(spec: DatasetFile, out_root: Path, log=print) -> dict:
    """Read, check and convert the user's files; write the dataset folder (events, items, users,
    id maps, rejected.csv, dataset.yaml, meta.json last). -> the import summary."""
    spec.check()
    t0 = time.time()
    m = spec.events.map
    ev_path = Path(spec.events.path)
    rej = Rejects(str(ev_path), {"csv": 1, "tsv": 1, "jsonl": 0}.get(_format(ev_path)))
    good, n_read = _checked_events(spec, rej)
    if good.num_rows == 0:
        _raise_nothing_survived(ev_path, n_read, rej)
    items_t, users_t = _attribute_files(spec)
    good, user_map, item_map = _with_dense_ids(good, items_t, users_t)
    good = _drop_duplicates(good, rej)  # never removes an id: the first copy stays
    n_before = good.num_rows
    good = _drop_sparse_users(good, spec.min_user_events, m["user"], rej)
    if good.num_rows == 0:
        _raise_nothing_survived(ev_path, n_read, rej)
    if good.num_rows < n_before:  # some ids are gone with their users' rows: refit, so the maps hold none of them
        good, user_map, item_map = _with_dense_ids(good, items_t, users_t)
    good, folded = _fold_clicks(good, "request" in m) if "kind" in m else (good, 0)  # a fold keeps every id
    items_t, users_t, item_docs, user_docs = _attributes(good, spec, user_map, item_map, items_t, users_t)
    events, side_docs = _event_table(good, spec)
    del good
    summary = {"read_rows": n_read, "imported_rows": events.num_rows,
               "rejected_rows": n_read - events.num_rows - folded, "clicks_folded_into_exposures": folded,
               "rejected": rej.summary(), "users": len(user_map.ids), "items": len(item_map.ids),
               "seconds": round(time.time() - t0, 2)}
    meta = {"source": f"imported from {ev_path}", "license": "the user's own data", "imported": True,
            "tz": spec.tz, "time_unit": spec.time_unit, "side_features": side_docs, "item_features": item_docs,
            "user_features": user_docs, "buckets": dict(spec.buckets), "import": summary,
            "notes": f"Imported with `edgerec data import`; ids mapped to dense indices (id_map_*.parquet); "
                     f"times in {spec.tz} local for calendar features."}
    extras = {"id_map_user": user_map.table(), "id_map_item": item_map.table()}
    ds = EventDataset(spec.name, events, items=items_t, users=users_t, meta=meta, extras=extras)
    _write_dataset(ds, spec, rej.table(), Path(out_root))
    log_summary(summary, Path(out_root) / spec.name, log)
    return summary


def _raise_nothing_survived(ev_path: Path, n_read: int, rej: Rejects) -> NoReturn:
    why = "; ".join(f"{k}: {v['rows']:,} rows, e.g. {v['first']}. Fix: {v['fix']}" for k, v in rej.summary().items())
    raise DataFormatError(f"{ev_path}: no event survived the checks ({n_read:,} data rows read). "
                          + (why or "The file has a header but no rows."))


def _write_dataset(ds: EventDataset, spec: DatasetFile, rejected: pa.Table, out_root: Path) -> None:
    """rejected.csv, dataset.yaml, then the dataset (meta.json last: its presence marks a complete import)."""
    import yaml

    from edgerec.io import atomic_path, write_text_atomic

    out = out_root / spec.name
    if (out / "meta.json").exists() and not (out / DATASET_FILE).exists():
        raise DataFormatError(f"{out} holds a dataset that was not imported; choose another name")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "rejected.csv") as tmp:
        pacsv.write_csv(rejected, tmp)
    write_text_atomic(out / DATASET_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True))
    ds.save(out_root, spec.name)


def log_summary(s: dict, out: Path, log=print) -> None:
    log(f"read {s['read_rows']:,} rows; imported {s['imported_rows']:,} events of {s['users']:,} users and "
        f"{s['items']:,} items; rejected {s['rejected_rows']:,} rows ({s['seconds']} s)")
    for reason, r in s["rejected"].items():
        log(f"  {reason}: {r['rows']:,} rows, e.g. {r['first']}. Fix: {r['fix']}")
    if s.get("clicks_folded_into_exposures"):
        log(f"  {s['clicks_folded_into_exposures']:,} click rows folded into their exposure rows (same user, item "
            "and request): one impression each, label 1")
    if s["rejected_rows"]:
        log(f"  every rejected row: {out / 'rejected.csv'}")
    log(f"dataset folder: {out}")


def load_id_maps(ds: EventDataset) -> tuple[IdMap, IdMap] | None:
    """(user map, item map) of an imported dataset; None for the bundled ones (their ids are ints)."""
    if "id_map_user" not in ds.extras:
        return None
    return IdMap.from_table(ds.extras["id_map_user"]), IdMap.from_table(ds.extras["id_map_item"])


__all__ = ["DatasetFile", "TableFile", "IdMap", "import_dataset", "read_dataset_file", "load_id_maps", "CORE_DOCS"]
