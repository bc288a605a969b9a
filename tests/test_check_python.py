"""tools/check_python.py: `make` stops in one line when its Python is older than the pins need."""

import importlib.util
import re
import subprocess
import sys

import pytest

from support import ROOT

SCRIPT = ROOT / "tools" / "check_python.py"


def _load():
    spec = importlib.util.spec_from_file_location("check_python", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_python = _load()


def test_an_older_python_gets_one_line_naming_what_was_found_and_what_is_needed():
    message = check_python.problem((3, 10, 12, "final", 0), "/usr/bin/python3")
    assert message == (
        "make: Python 3.11 or newer is needed; found Python 3.10.12 at /usr/bin/python3. "
        "Install 3.11+ and run `make PYTHON=python3.11 ...`"
    )
    assert "\n" not in message
    assert check_python.problem((2, 7, 18), "/usr/bin/python2").startswith("make: Python 3.11 or newer")


@pytest.mark.parametrize("version", [(3, 11, 0), (3, 12, 1), (3, 13, 0), (4, 0, 0)])
def test_the_needed_python_or_newer_passes(version):
    assert check_python.problem(version, "/usr/bin/python3") is None


def test_the_needed_version_is_the_one_pyproject_requires():
    requires = re.search(r'^requires-python = ">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert tuple(int(part) for part in requires.groups()) == check_python.NEEDED


def test_run_by_this_python_it_passes_silently():
    finished = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert (finished.returncode, finished.stdout, finished.stderr) == (0, "", "")


def test_run_by_a_too_old_python_it_exits_1_with_the_message(tmp_path):
    """The same code path as an old interpreter's: NEEDED raised above the running Python."""
    source = SCRIPT.read_text().replace("NEEDED = (3, 11)", "NEEDED = (99, 0)")
    assert "NEEDED = (99, 0)" in source
    script = tmp_path / "check_python.py"
    script.write_text(source)
    finished = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    assert finished.stdout == ""
    assert finished.stderr == (
        f"make: Python 99.0 or newer is needed; found Python {'.'.join(map(str, sys.version_info[:3]))} "
        f"at {sys.executable}. Install 99.0+ and run `make PYTHON=python99.0 ...`\n"
    )


def test_it_uses_no_syntax_an_old_python_cannot_read():
    """No f-strings and nothing newer than Python 3.6, so that an old Python prints the message instead of a
    SyntaxError; only the standard library."""
    source = SCRIPT.read_text()
    assert not re.search(r"""\bf["']""", source)
    assert re.findall(r"^\s*(?:import|from) (\w+)", source, re.M) == ["sys"]


def test_the_makefile_checks_before_it_creates_the_venv():
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("$(PYTHON) tools/check_python.py") < makefile.index("$(PYTHON) -m venv")
