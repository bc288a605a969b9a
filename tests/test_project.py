"""The project's own files agree: pins, CI entry point, README commands, committed results."""

import csv
import json
import re
import subprocess
import sys

import pytest

import ae.metrics as ae_metrics
import ae_helpers as ah
from ae import runs
from support import COMMITTED_WEIGHTS, ROOT


def _pins(text):
    return dict(re.findall(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, re.M))


def test_environment_yml_pins_the_same_packages_as_requirements():
    requirements = _pins((ROOT / "requirements.txt").read_text())
    conda = _pins((ROOT / "environment.yml").read_text())
    assert requirements
    assert requirements == conda
    assert requirements["torch"] == "2.14.1"
    assert requirements["torchvision"] == "0.29.1"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", COMMITTED_WEIGHTS)
def test_committed_weights_reproduce_their_metrics(mnist, name):
    run = runs.load_run(ROOT / name, require_model=True)
    train_idx, val_idx = ah.split_indices()
    measured = ae_metrics.measure_run(run.model, mnist, train_idx, val_idx)
    for key in ("train_mse", "test_mse", "knn5_accuracy", "knn5_val_accuracy"):
        assert measured[key] == pytest.approx(run.metrics[key], abs=2e-4), key


@pytest.mark.parametrize("group", ["default_layers", "mynet"])
def test_summaries_match_the_run_folders(group):
    with open(ROOT / group / "summary.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    names = [n for n in runs.EXPERIMENTS if n.startswith(group + "/")]
    assert names
    for name in names:
        metrics = json.loads((ROOT / name / "metrics.json").read_text())
        row = rows[name.split("/", 1)[1]]
        assert float(row["test_mse"]) == metrics["test_mse"]
        assert int(row["epochs"]) == metrics["epochs_run"]
        config = ah.RunConfig.from_dict(json.loads((ROOT / name / "config.json").read_text()))
        assert config == runs.EXPERIMENTS[name], f"{name} was trained with another config than EXPERIMENTS"
        assert runs.run_is_complete(ROOT / name, runs.EXPERIMENTS[name]), f"the notebook would retrain {name}"
    assert "PCA-2 baseline" in rows


def test_readme_figures_match_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    for name in COMMITTED_WEIGHTS:
        metrics = json.loads((ROOT / name / "metrics.json").read_text())
        assert f"{metrics['test_mse']:.4f}" in readme, f"README does not quote {name}'s test MSE"


def test_jupyterlab_has_the_explorer_front_end_the_readme_names():
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True, timeout=120
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    named = re.search(r"it must list `(jupyter-matplotlib v[0-9.]+ enabled OK)`", (ROOT / "README.md").read_text())
    assert named, "README's troubleshooting does not name the extension line"
    assert named.group(1) in plain
