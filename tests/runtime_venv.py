"""A virtual environment built from requirements.txt alone (what a student installs), cached between runs,
and the notebook executed with it in a copy of the project, as `make run` would."""

import hashlib
import os
import shutil
import subprocess
import sys

from support import QUICK_ENV, ROOT

NOTEBOOK = "bmi219_autoencoder.ipynb"
REQUIREMENTS = ROOT / "requirements.txt"
# Git-ignored; `make clean` removes it. One venv per requirements.txt and Python: a new pin builds a new one.
CACHE = ROOT / ".cache"
# What only requirements-dev.txt installs: a student's environment has none of them.
DEV_TOOLS = ("pytest", "nbval", "playwright", "ruff", "mutmut")


def quick_mode(work):
    """The environment variables that run the notebook copied into ``work`` in quick mode (trainings of
    seconds, written to a temporary folder): tools/quick_mode.py, started by the IPython profile they name."""
    return QUICK_ENV


def _python_in(folder):
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _key(requirements):
    return hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:16]


def runtime_venv(requirements=REQUIREMENTS, cache=CACHE):
    """The Python of a fresh venv (no system site-packages) with ``requirements`` installed by pip alone.
    Built once per content of ``requirements`` (minutes: torch is large), then reused; older ones are removed."""
    folder = cache / f"runtime-venv-{_key(requirements)}"
    complete = folder / ".complete"
    if complete.is_file():
        return _python_in(folder)
    for old in cache.glob("runtime-venv-*"):
        shutil.rmtree(old)
    cache.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=600)
    python = _python_in(folder)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if install.returncode != 0:
        raise RuntimeError(f"pip install -r {requirements.name} failed:\n{install.stderr[-4000:]}")
    complete.write_text(requirements.read_text())  # written last: a half-built venv is rebuilt
    return python


def clean_env(python, work):
    """The environment a student's shell would give ``python``'s venv: its bin first on PATH, no Jupyter or
    Python settings of this machine's user or of the test session's venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "PYTHON", "VIRTUAL_ENV", "IPYTHON", "MPLBACKEND"))
    }
    env["PATH"] = str(python.parent) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["JUPYTER_CONFIG_DIR"] = str(work / ".jupyter-config")
    env["JUPYTER_DATA_DIR"] = str(work / ".jupyter-data")
    return env


def execute_notebook(python, work, timeout_s=1800):
    """Run `jupyter nbconvert --to notebook --execute` with ``python``'s venv on the notebook in ``work``,
    in quick mode; the executed copy is ``work/executed.ipynb``. Returns the finished process."""
    env = {**clean_env(python, work), **quick_mode(work)}
    command = [str(python), "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute"]
    command += ["--ExecutePreprocessor.timeout=900", "--output", "executed.ipynb", NOTEBOOK]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout_s)
