"""What several tests share besides fixtures: the repository's root and a copy of the project."""

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the notebook imports: a copy of the project needs all of them.
MODULES = ("ae_helpers.py", "mnist_files.py")
# What the notebook reads besides MNIST: the saved runs and the committed benchmark.
RESULT_FOLDERS = ("default_layers", "mynet", "benchmarks")


def copy_project(dest):
    """What the notebook reads, copied into ``dest``: running it there (and JupyterLab's autosave)
    touches nothing in the repository. The verified MNIST is linked, only read."""
    for name in ("bmi219_autoencoder.ipynb", *MODULES):
        shutil.copy2(ROOT / name, dest / name)
    for name in RESULT_FOLDERS:
        shutil.copytree(ROOT / name, dest / name)
    (dest / "data").symlink_to(ROOT / "data")
    return dest


def copy_finished_run(name, dest, as_name=None):
    """The three files that make the committed run ``name`` finished (no weights, no figures), copied to
    ``dest/as_name`` (default: the same name)."""
    folder = dest / (as_name or name)
    folder.mkdir(parents=True)
    for file in ("config.json", "metrics.json", "history.csv"):
        shutil.copy(ROOT / name / file, folder / file)
    return folder
