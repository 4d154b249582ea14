"""The command line: help that explains, clear errors without tracebacks, train -> eval."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgerec.cli import main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("data", "train", "eval", "results", "bench", "demo"):
        assert cmd in out


def test_data_list_and_describe(capsys):
    assert main(["data", "list"]) == 0
    assert "ml-100k" in capsys.readouterr().out
    assert main(["data", "describe", "o2o-sim:tiny"]) == 0
    out = capsys.readouterr().out
    assert "position" in out and "ctr" in out



@pytest.mark.parametrize("argv, message", [
    (["data"], "required: {list,prepare,describe,example,import}"),  # the actions, not a bare ACTION
    (["data", "import", "mine"], "the following arguments are required: --events"),
])
def test_data_without_its_action_or_its_events_file_names_what_is_missing(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("Base: {dataset: ml-100k}\nX: {model: DIN, train: {lrr: 0.1}}\n")
    proc = subprocess.run([sys.executable, "-m", "edgerec.cli", "train", "--config", str(bad), "--expid", "X"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown key 'train.lrr'. Did you mean 'lr'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "edgerec.cli", "data", "describe", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown dataset 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_train_then_eval(config_dir, capsys):
    args = ["train", "--config", str(config_dir / "ctr.yaml"), "--expid", "LR_test", "--no-progress",
            "--set", f"output_dir={config_dir / 'runs'}", "--set", f"ledger={config_dir / 'l.jsonl'}",
            "--seed", "1", "--seed", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "LR_test: mean ± std over 2 seeds" in out
    run = next((config_dir / "runs" / "LR_test").iterdir())
    assert main(["eval", "--run", str(run), "--metrics", "AUC,NDCG@5"]) == 0
    assert "NDCG@5" in capsys.readouterr().out
    assert main(["results", "--ledger", str(config_dir / "l.jsonl")]) == 0
    assert "LR_test" in capsys.readouterr().out
    assert main(["eval", "--run", str(config_dir)]) == 2  # not a run directory


def test_compress_augmentation_flags_are_checked_before_any_work(capsys):
    for argv, msg in ((["--augment", "0", "--augment-rotate"], "need --augment N"),
                      (["--augment", "2", "--augment-tasks", "spam", "--tasks", "trec"], "not among the tasks"),
                      (["--augment", "2", "--augment-replace", "1.5"], "a probability in")):
        assert main(["compress", *argv]) == 2
        assert msg in capsys.readouterr().err


def _one_error_line(err: str) -> str:
    (line,) = [x for x in err.splitlines() if x.startswith(("error:", "edgerec "))]
    assert "Traceback" not in err
    return line


def test_store_and_events_paths_are_checked_before_any_work(tmp_path, capsys):
    """--store at a directory or a non-database, --events at a directory: one line (they were sqlite3
    and IsADirectoryError tracebacks), before --export-from writes anything."""
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    events = tmp_path / "ev.jsonl"
    for store, message in ((f"sqlite:{tmp_path}", f"--store sqlite:{tmp_path} is a directory"),
                           (f"sqlite:{tmp_path / 'notes.txt'}", "notes.txt is not an SQLite database"),
                           (f"sqlite:{tmp_path / 'no' / 'such' / 'dir.db'}", "cannot open it as an SQLite feature store")):
        assert main(["stream", "--events", str(events), "--export-from", "o2o-sim:tiny", "--store", store]) == 2
        assert message in _one_error_line(capsys.readouterr().err)
        assert not events.exists()  # refused before the export
    for argv in (["stream", "--store", "memory", "--events"], ["batch", "--events"]):
        assert main([*argv, str(tmp_path)]) == 2
        assert f"--events {tmp_path} is a directory" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv,message", [
    (["stream", "--events", "x.jsonl", "--positions", "0"], "argument --positions: expected an integer >= 1, got 0"),
    (["batch", "--dataset", "o2o-sim:tiny", "--max-len", "-1"], "argument --max-len: expected an integer >= 1, got -1"),
    (["serve", "--run", "r", "--port", "70000"], "argument --port: expected an integer 1..65535, got 70000"),
    (["serve", "--run", "r", "--port", "9" * 5000], "argument --port: expected an integer 1..65535, got '999"),
    (["serve", "--run", "r", "--threads", "0"], "argument --threads: expected an integer >= 1, got 0"),
    (["stream", "--events", "x.jsonl", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["stream", "--events", "x.jsonl", "--retries", "-1"], "argument --retries: expected an integer >= 0, got -1"),
    (["stream", "--events", "x.jsonl", "--idle-timeout", "nan"], "argument --idle-timeout: expected a finite number"),
    (["serve", "--run", "r", "--workers", "0"], "argument --workers: expected an integer 1..64, got 0"),
    (["compress", "--augment", "-1"], "argument --augment: expected an integer 0..64, got -1"),
])
def test_out_of_range_flags_are_refused_by_the_parser(capsys, argv, message):
    """--port 70000 listened on another port; --positions 0 crashed the stream at the first click with a
    position; --threads 0 was a torch traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in _one_error_line(err) and len(err) < 2000


@pytest.mark.parametrize("mb", ["0", "nan", "-1"])
def test_max_body_mb_must_be_positive(capsys, mb):
    assert main(["serve", "--run", "r", "--max-body-mb", mb]) == 2
    assert "--max-body-mb must be a number of megabytes > 0" in _one_error_line(capsys.readouterr().err)


def test_compress_checks_its_output_before_the_build(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["compress", "--out", str(tmp_path / "a_file" / "m.pack")]) == 2
    assert "--out: cannot write" in _one_error_line(capsys.readouterr().err)


def test_stream_checks_its_dead_letter_file_before_it_reads(tmp_path, capsys):
    """An unwritable dead-letter file failed at the first bad line, with the batch in flight."""
    (tmp_path / "ev.jsonl").write_text("{not json\n")
    (tmp_path / "ev.rejected.jsonl").mkdir()
    assert main(["stream", "--events", str(tmp_path / "ev.jsonl"), "--store", "memory"]) == 2
    assert "the dead-letter file: cannot write" in _one_error_line(capsys.readouterr().err)


def test_a_store_path_that_is_not_our_database_is_left_untouched(tmp_path, capsys):
    """bench/hardening.py found it: SQLite silently turned a 1-byte file into a new database (the
    user's file overwritten, exit 0); a database of another program was used as a store."""
    import sqlite3

    (tmp_path / "ev.jsonl").write_text("")
    small = tmp_path / "notes.txt"
    small.write_bytes(b"x")
    assert main(["stream", "--events", str(tmp_path / "ev.jsonl"), "--store", f"sqlite:{small}"]) == 2
    assert "is not an SQLite database" in _one_error_line(capsys.readouterr().err)
    assert small.read_bytes() == b"x"
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE photos (x)")
    db.commit()
    db.close()
    assert main(["stream", "--events", str(tmp_path / "ev.jsonl"), "--store", f"sqlite:{other}"]) == 2
    assert "the database of another program (tables photos)" in _one_error_line(capsys.readouterr().err)


def test_batch_checks_its_output_folder_first(tmp_path, capsys):
    """bench/hardening.py found it: `edgerec batch --out FILE` was a FileExistsError traceback after the fold."""
    (tmp_path / "a_file").write_text("")
    assert main(["batch", "--dataset", "o2o-sim:tiny", "--out", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys.readouterr().err)


def test_export_takes_a_run_or_a_pack(tmp_path, capsys):
    assert main(["export"]) == 2 and "exactly one of --run RUN" in capsys.readouterr().err
    (tmp_path / "x.pack").write_bytes(b"not a pack")
    assert main(["export", "--pack", str(tmp_path / "x.pack")]) == 2
    assert "not an EI-BERT artifact" in capsys.readouterr().err
    keep = tmp_path / "mine"  # a folder of the user's: refused before any work, nothing removed
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    assert main(["export", "--pack", str(tmp_path / "x.pack"), "--out", str(keep)]) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err and (keep / "notes.txt").exists()
    (tmp_path / "afile").write_text("")
    assert main(["export", "--pack", str(tmp_path / "x.pack"), "--out", str(tmp_path / "afile")]) == 2
    assert "is not a folder" in capsys.readouterr().err
