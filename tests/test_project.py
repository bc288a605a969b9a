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


DEV_TOOLS = ("pytest", "nbval", "playwright", "ruff", "mutmut")


def test_environment_yml_pins_the_same_packages_as_requirements():
    requirements = _pins((ROOT / "requirements.txt").read_text())
    conda = _pins((ROOT / "environment.yml").read_text())
    assert requirements
    assert requirements == conda
    assert requirements["torch"] == "2.14.1"
    assert requirements["torchvision"] == "0.29.1"


def test_the_runtime_list_holds_no_development_tool_and_the_dev_list_adds_them():
    runtime = _pins((ROOT / "requirements.txt").read_text())
    dev_text = (ROOT / "requirements-dev.txt").read_text()
    dev = _pins(dev_text)
    assert not set(DEV_TOOLS) & set(runtime)
    assert set(DEV_TOOLS) <= set(dev)
    assert not set(runtime) & set(dev), "a pin is written twice: the dev list includes the runtime list"
    first = next(line for line in dev_text.splitlines() if line.strip() and not line.startswith("#"))
    assert first == "-r requirements.txt"


def _prerequisites(makefile, target):
    """Every target that `make target` builds first, from the Makefile's `target: prerequisites` lines."""
    rules = dict(re.findall(r"^([\w$().\-/]+):[ \t]*([^=\n]*)$", makefile, re.M))
    rules = {name.replace("$(VENV)", ".venv"): deps.replace("$(VENV)", ".venv").split() for name, deps in rules.items()}
    seen, todo = set(), [target]
    while todo:
        for dep in rules.get(todo.pop(), []):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_make_lab_and_run_need_only_the_runtime_and_make_test_the_tools():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab", "run", "data", "results"):
        needs = _prerequisites(makefile, target)
        assert "venv" in needs and "requirements.txt" in needs, target
        assert "requirements-dev.txt" not in needs and "dev" not in needs, target
    for target in ("test", "lint", "browser", "mutants", "bench"):
        assert "requirements-dev.txt" in _prerequisites(makefile, target), target


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
        assert f"{metrics['knn5_accuracy']:.3f}" in readme, f"README does not quote {name}'s 5-NN accuracy"


def test_jupyterlab_has_the_explorer_front_end_the_readme_names():
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True, timeout=120
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    named = re.search(r"it must list `(jupyter-matplotlib v[0-9.]+ enabled OK)`", (ROOT / "README.md").read_text())
    assert named, "README's troubleshooting does not name the extension line"
    assert named.group(1) in plain


def test_readme_is_short_and_links_the_licence_and_the_contributors_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split()) <= 900
    for name in ("LICENSE", "LICENSE-CC-BY-4.0", "CONTRIBUTING.md", "docs/explorer.png", "requirements.txt"):
        assert f"({name})" in readme or f"`{name}`" in readme, name
        assert (ROOT / name).is_file(), name
    assert "make lab" in readme
    assert ".venv\\Scripts\\activate" in readme  # the recipe without make covers Windows
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1" in readme
