"""Quick mode (tools/quick_mode.py): the notebook's trainings shortened, saved runs kept out of the project."""

import json
import os
import subprocess
import sys

import pytest

import ae_helpers as ah
import quick_mode
from ae import analyses, runs
from support import QUICK_ENV, ROOT


@pytest.fixture
def quick(monkeypatch, tmp_path):
    """Quick mode in this process, undone after the test (its folder: tmp_path)."""
    for name in ("train_run", "load_or_train", "get_run"):
        monkeypatch.setattr(runs, name, getattr(runs, name))
    return quick_mode.activate(tmp_path)


def test_a_shortened_config_trains_one_epoch_on_at_most_2000_images_in_batches_that_fit():
    quick = quick_mode.shorten(ah.RunConfig(train_subset=500, batch_size=1000, track_every=10, epochs=150))
    assert (quick.epochs, quick.train_subset, quick.batch_size, quick.track_every) == (1, 500, 500, 1)
    default = quick_mode.shorten(ah.RunConfig())
    assert (default.train_subset, default.layer_sizes, default.lr) == (2000, ah.DEFAULT_LAYERS, 5e-4)
    assert quick_mode.shorten(default) == default  # shortening twice changes nothing more


def test_quick_mode_trains_a_saved_run_in_its_own_folder_and_loads_it_the_second_time(mnist, quick):
    run = runs.get_run("mynet/adam_lr5e-4", mnist, progress=False, root=ROOT)  # a root asked for is not used
    assert run.run_dir == quick / "mynet/adam_lr5e-4"
    assert run.config == quick_mode.shorten(runs.EXPERIMENTS["mynet/adam_lr5e-4"])
    assert runs.run_is_complete(run.run_dir, run.config)
    again = runs.get_run("mynet/adam_lr5e-4", mnist, progress=False)
    assert again.metrics == json.loads((run.run_dir / "metrics.json").read_text())  # loaded, not retrained


def test_quick_mode_shortens_trainings_the_notebook_asks_for_directly(mnist, quick):
    config = ah.RunConfig(layer_sizes=(16, 2), train_subset=5000, epochs=4)
    assert runs.train_run(config, mnist, progress=False).metrics["epochs_run"] == 1
    trained = analyses.train_many({"a": config}, mnist)["a"]  # through the module, as the notebook calls it
    assert (trained.config.epochs, trained.config.train_subset) == (1, 2000)
    assert quick_mode.activate() == quick  # once active, activating again changes nothing


def test_a_kernel_started_with_the_quick_environment_is_in_quick_mode(tmp_path):
    code = "from ae import runs; print(getattr(runs.train_run, 'quick', False))"
    shown = {}
    for name, env in {"quick": QUICK_ENV, "normal": {"IPYTHONDIR": QUICK_ENV["IPYTHONDIR"]}}.items():
        result = subprocess.run(
            [sys.executable, "-m", "IPython", "-c", code],
            cwd=ROOT,
            env={**{k: v for k, v in os.environ.items() if k != "AE_QUICK"}, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        shown[name] = result.stdout.strip().splitlines()[-1]
    assert shown == {"quick": "True", "normal": "False"}
