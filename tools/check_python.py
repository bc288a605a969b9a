"""Stop `make` early, in one line, when the Python it would build .venv from is too old for the pins.

Run by the Makefile before it creates the virtual environment (`$(PYTHON) tools/check_python.py`).
Only the standard library, and no syntax newer than Python 3.6 (no f-strings), so that an old Python
can read this file and print the message instead of a syntax error.
"""

import sys

# numpy 2.4.6 (requirements.txt) needs Python 3.11 or newer; pyproject.toml's requires-python says the same.
NEEDED = (3, 11)


def problem(version, executable, needed=NEEDED):
    """The one-line message for a Python of ``version`` (a tuple) at ``executable``, or None when it will do."""
    if tuple(version[:2]) >= tuple(needed):
        return None
    found = ".".join(str(part) for part in version[:3])
    wanted = "{}.{}".format(*needed)
    return (
        "make: Python {wanted} or newer is needed; found Python {found} at {executable}. "
        "Install {wanted}+ and run `make PYTHON=python{wanted} ...`".format(
            wanted=wanted, found=found, executable=executable
        )
    )


def main():
    message = problem(sys.version_info, sys.executable or "an unknown path")
    if message:
        sys.stderr.write(message + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
