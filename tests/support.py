"""What several tests share besides fixtures: the repository's root and a copy of the project."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the notebook imports: a copy of the project needs all of them.
MODULES = ("ae_helpers.py", "mnist_files.py", "ae")
# A kernel started with these runs the notebook in quick mode (tools/quick_mode.py): a few minutes.
QUICK_ENV = {"AE_QUICK": "1", "IPYTHONDIR": str(ROOT / "tools" / "ipython")}
# What the notebook reads besides MNIST: the saved runs and the committed benchmark.
RESULT_FOLDERS = ("default_layers", "mynet", "benchmarks")


def committed_weights() -> tuple:
    """The run folders whose model.pt is committed (the rest are git-ignored): git's own list."""
    listed = subprocess.run(
        ["git", "ls-files", "--", "*/model.pt"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return tuple(sorted(str(Path(path).parent.as_posix()) for path in listed))


COMMITTED_WEIGHTS = committed_weights()


def copy_project(dest):
    """What the notebook reads, copied into ``dest``: running it there (and JupyterLab's autosave)
    touches nothing in the repository. The verified MNIST is linked, only read."""
    for name in ("bmi219_autoencoder.ipynb", *MODULES):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
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
