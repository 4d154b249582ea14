"""Strict reading of delimited text files into typed Arrow tables.

Real data files are read with pyarrow (fast), but every failure is turned into a DataFormatError
that names the file, the 1-based data row (and the file line), the column, the bad value and the
fix. Nothing is silently dropped: a malformed row stops the load instead of being skipped.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from edgerec.errors import DataFormatError

_INT_TYPES = {"int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64()}
_FLOAT_TYPES = {"float32": pa.float32(), "float64": pa.float64()}


@dataclass(frozen=True)
class Col:
    """Expected column: name in the file, Arrow dtype name, whether empty values are allowed."""

    name: str
    dtype: str  # int8|int16|int32|int64|float32|float64|string
    nullable: bool = False
    na_tokens: tuple[str, ...] = ()  # extra strings meaning "missing" (needs nullable=True)


def read_delimited(
    data: bytes,
    source: str,
    *,
    columns: list[Col],
    delimiter: str = ",",
    strip_type_suffix: bool = False,
    fix_hint: str = "",
) -> pa.Table:
    """Parse `data` (the bytes of file `source`) and return a table with exactly `columns`.

    strip_type_suffix: RecBole atomic files name columns `user_id:token`; the suffix is dropped.
    Extra columns in the file are ignored; missing ones are an error.
    """
    first_bad: list[int | None] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        first_bad.append(row.number)
        return "error"

    header = _read_header(data, delimiter, source)
    names = [h.split(":", 1)[0] if strip_type_suffix else h for h in header]
    if names and names[0] == "":
        names[0] = "_index"  # pandas-written CSVs start with an unnamed index column
    missing = [c.name for c in columns if c.name not in names]
    if missing:
        raise DataFormatError(
            f"{source}: missing column(s) {missing}; found {names}. "
            f"{fix_hint or 'The file does not have the expected layout.'}"
        )
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid,
                                             newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                include_columns=[c.name for c in columns],
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as exc:
        row = first_bad[0] if first_bad else None
        where = f"line {row}" if row is not None else "a row"
        raise DataFormatError(
            f"{source}: {where} has the wrong number of fields (expected {len(names)}, "
            f"separated by {delimiter!r}): {exc}. {fix_hint}"
        ) from None
    out = {}
    for col in columns:
        out[col.name] = _convert(table.column(col.name), col, source)
    return pa.table(out)


def _read_header(data: bytes, delimiter: str, source: str) -> list[str]:
    end = data.find(b"\n")
    line = data[: end if end >= 0 else len(data)].rstrip(b"\r")
    if not line:
        raise DataFormatError(f"{source}: file is empty (no header line).")
    try:
        return line.decode("utf-8").split(delimiter)
    except UnicodeDecodeError:
        raise DataFormatError(f"{source}: header is not UTF-8 text.") from None


def _convert(arr: pa.ChunkedArray, col: Col, source: str) -> pa.Array:
    arr = arr.combine_chunks()
    if col.na_tokens:
        is_na = pc.is_in(arr, pa.array(list(col.na_tokens), pa.string()))
        arr = pc.if_else(is_na, pa.scalar(None, pa.string()), arr)
    if not col.nullable and arr.null_count:
        row = _first_index(pc.is_null(arr))
        raise DataFormatError(
            f"{source}: row {row + 1} (line {row + 2}), column {col.name!r}: value is empty "
            f"but the column is required ({col.dtype})."
        )
    if col.dtype == "string":
        return arr
    target = _INT_TYPES.get(col.dtype) or _FLOAT_TYPES.get(col.dtype)
    if target is None:
        raise ValueError(f"unknown dtype {col.dtype}")
    try:
        as_float = pc.cast(arr, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        _raise_bad_value(arr, col, source, float)
    if col.dtype in _FLOAT_TYPES:
        return pc.cast(as_float, target)
    # integers may be written as "3" or "3.0" (pandas writes float columns with NaN that way)
    integral = pc.equal(pc.floor(as_float), as_float)
    if not pc.all(pc.fill_null(integral, True)).as_py():
        _raise_bad_value(arr, col, source, _strict_int)
    try:
        return pc.cast(as_float, target)
    except pa.ArrowInvalid:
        _raise_bad_value(arr, col, source, lambda s: _range_checked(s, col.dtype))


def _first_index(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _strict_int(s: str) -> int:
    v = float(s)
    if not math.isfinite(v) or v != math.floor(v):
        raise ValueError
    return int(v)


def _range_checked(s: str, dtype: str) -> int:
    v = _strict_int(s)
    bits = int(dtype[3:])
    if not -(2 ** (bits - 1)) <= v < 2 ** (bits - 1):
        raise ValueError
    return v


def _raise_bad_value(arr: pa.Array, col: Col, source: str, parse) -> None:
    for i, value in enumerate(arr.to_pylist()):
        if value is None:
            continue
        try:
            parse(value)
        except (ValueError, OverflowError):
            raise DataFormatError(
                f"{source}: row {i + 1} (line {i + 2}), column {col.name!r}: cannot read {value!r} "
                f"as {col.dtype}. Fix or remove that row."
            ) from None
    raise DataFormatError(f"{source}: column {col.name!r} cannot be read as {col.dtype}.")
