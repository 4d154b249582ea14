"""The command line: help that explains, clear errors without tracebacks, train -> eval."""

from __future__ import annotations

import subprocess
import sys

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
