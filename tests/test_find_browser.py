"""The browser tests on any laptop: which browser they use, and what happens without one."""

import os
import subprocess
import sys

import pytest

import find_browser
from support import ROOT


def test_chrome_path_wins_and_a_wrong_one_says_what_to_do(tmp_path):
    chrome = tmp_path / "my-chrome"
    chrome.write_text("#!/bin/sh\n")
    assert find_browser.find_browser({"CHROME_PATH": str(chrome), "PATH": ""}) == str(chrome)
    with pytest.raises(find_browser.BrowserNotFound, match="CHROME_PATH is set to .*not a file.*unset it"):
        find_browser.find_browser({"CHROME_PATH": str(tmp_path / "missing"), "PATH": ""})


def test_a_browser_on_the_path_is_found_by_its_usual_name(tmp_path):
    fake = tmp_path / "google-chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_browser.find_browser({"PATH": str(tmp_path)}) == str(fake)


PLUGIN = "import find_browser\nfind_browser.find_browser = lambda environ=None: None  # a machine without any\n"


@pytest.mark.parametrize(
    "ci, returncode, words",
    [
        (None, 0, "no Chrome or Chromium: Install Chrome or Chromium"),
        ("true", 1, "CI must run the browser tests, but no browser was found"),
    ],
)
def test_without_a_browser_the_browser_tests_skip_saying_how_to_enable_them_but_fail_under_ci(
    tmp_path, ci, returncode, words
):
    (tmp_path / "no_browser.py").write_text(PLUGIN)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT / "tests")])
    if ci:
        env["CI"] = ci
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "tests" / "test_browser.py"),
            "-p",
            "no_browser",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == returncode, result.stdout[-2000:]
    assert words in result.stdout


def test_make_browser_reports_a_wrong_chrome_path_without_failing_the_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHROME_PATH", str(tmp_path / "missing"))
    assert find_browser.main([]) == 0
    assert "CHROME_PATH is set to" in capsys.readouterr().out
