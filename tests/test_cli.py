"""The command line: bad values and unknown flags exit 2 with usage, never a traceback."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "ae_helpers.py"), *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("args, words", [
    (["train", "--out", "x", "--layers", "100", "0"], "layer_sizes must be a non-empty list of positive integers"),
    (["train", "--out", "x", "--layers", "1.5"], "layer sizes must be integers"),
    (["train", "--out", "x", "--layers", "500,x,2"], "layer sizes must be integers"),
    (["train", "--out", "x", "--lr", "-1"], "lr must be a positive number"),
    (["train", "--out", "x", "--optimizer", "lbfgs"], "invalid choice"),
    (["train", "--out", "x", "--epochs", "-3"], "epochs must be an integer >= 0"),
    (["train", "--out", "x", "--device", "tpu"], "choose 'auto', 'cpu', 'cuda' or 'mps'"),
    (["train", "--out", "x", "--dropout", "0.5"], "unrecognized arguments: --dropout"),
    (["experiments", "--only", "default_layers/nope"], "unknown run"),
    (["experiments", "--jobs", "0"], "jobs must be an integer >= 1"),
    (["train", "--out", "x", "--noise", "-1"], "noise must be a standard deviation >= 0"),
])
def test_bad_input_exits_2_with_usage(args, words, tmp_path):
    result = _cli(*args, cwd=tmp_path)  # whatever goes wrong, nothing is written into the repository
    assert result.returncode == 2
    assert "usage:" in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr


def test_experiments_list_names_every_run():
    result = _cli("experiments", "--list")
    assert result.returncode == 0
    assert "default_layers/adam_lr5e-4" in result.stdout and "mynet/adam_lr5e-4" in result.stdout


def test_train_writes_a_finished_run_folder(tmp_path):
    out = tmp_path / "cli_run"
    result = _cli("train", "--out", str(out), "--layers", "32,2", "--epochs", "1", "--subset", "1000", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "history.csv", "model.pt", "metrics.json", "learning_curve.png",
                 "latent_space.png", "test_data_tracking/epoch_001.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["layer_sizes"] == [32, 2]


# Every training flag, each away from its default: (command-line value, field in config.json, value there).
FLAGS = {"--layers": ("24,2", "layer_sizes", [24, 2]), "--activation": ("tanh", "activation", "tanh"),
         "--optimizer": ("rmsprop", "optimizer", "rmsprop"), "--loss": ("l1", "loss", "l1"),
         "--schedule": ("cosine", "schedule", "cosine"), "--lr": ("0.002", "lr", 0.002),
         "--batch-size": ("50", "batch_size", 50), "--epochs": ("1", "epochs", 1), "--seed": ("7", "seed", 7),
         "--subset": ("300", "train_subset", 300), "--weight-decay": ("0.01", "weight_decay", 0.01),
         "--ema": ("0.9", "ema", 0.9), "--noise": ("0.3", "noise", 0.3), "--bf16": (None, "bf16", True)}


def test_every_training_flag_reaches_the_runs_config(tmp_path):
    import ae_helpers as ah
    defaults = ah.RunConfig().to_dict()
    args = [a for flag, (value, _, _) in FLAGS.items() for a in ([flag] if value is None else [flag, value])]
    out = tmp_path / "flags"
    result = _cli("train", "--out", str(out), "--device", "cpu", "--root", str(ROOT / "data"), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    for flag, (_, field, expected) in FLAGS.items():
        assert expected != defaults[field], f"{flag}: choose a value other than the default"
        assert saved[field] == expected, flag


def test_parallel_experiments_skip_finished_runs_and_a_worker_trains_through_the_cli(tmp_path):
    # A copy of a finished run (and the data) under another root: a real worker process, launched with
    # the same command line `make results --jobs` uses, finds it finished and writes the summary.
    import shutil
    import ae_helpers as ah
    name = "mynet/adam_lr5e-4"
    shutil.copytree(ROOT / name, tmp_path / name)
    (tmp_path / "data").symlink_to(ROOT / "data")
    assert ah._launch_worker(name, tmp_path, 1, False, "cpu") == 0
    log = (tmp_path / name / "train.log").read_text()
    assert f"{name}: finished, skipped" in log, log
    assert "adam_lr5e-4 |" in (tmp_path / "mynet" / "summary.md").read_text()
    result = _cli("experiments", "--jobs", "2", "--only", name, "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"{name}: finished, skipped" in result.stdout
