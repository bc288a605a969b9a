"""Find a Chrome or Chromium for the browser test, on any laptop: no step assumes Debian or apt.

Looked for in this order:
1. ``$CHROME_PATH``: the path of a Chrome or Chromium executable (an error if it does not exist);
2. the usual command names on ``PATH`` (chromium, chromium-browser, google-chrome, ...);
3. the usual install locations (macOS applications, /usr/bin, /snap/bin, /opt/google);
4. the Chromium that Playwright downloads itself (``playwright install chromium``).

``python tests/find_browser.py --install`` (run by ``make test``) reports what it found and,
when nothing is found, tries ``playwright install chromium`` once; it never fails the build:
without a browser the browser tests are skipped with a message (a failure under ``CI=true``).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
LOCATIONS = (
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    str(Path.home() / "Applications/Google Chrome.app/Contents/MacOS/Google Chrome"),
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/snap/bin/chromium",
    "/opt/google/chrome/chrome",
)
HOW_TO_ENABLE = (
    "Install Chrome or Chromium (Debian/Ubuntu: `apt-get install chromium`; macOS: Google Chrome from "
    "google.com/chrome), or set CHROME_PATH to its executable, or run "
    "`.venv/bin/python -m playwright install chromium` where the network allows; then `make test`."
)


class BrowserNotFound(RuntimeError):
    pass


def _playwright_chromium():
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
    except Exception:  # playwright missing or its driver broken: no browser from it
        return None
    return path if os.path.exists(path) else None


def find_browser(environ=os.environ):
    """The path of a Chrome or Chromium to drive, or None when there is none."""
    chosen = environ.get("CHROME_PATH")
    if chosen:
        if not os.path.isfile(chosen):
            raise BrowserNotFound(
                f"CHROME_PATH is set to {chosen!r}, which is not a file. Point it at a Chrome or "
                "Chromium executable, or unset it to search the usual places."
            )
        return chosen
    for name in NAMES:
        found = shutil.which(name, path=environ.get("PATH", os.defpath))
        if found:
            return found
    for location in LOCATIONS:
        if os.path.isfile(location):
            return location
    return _playwright_chromium()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        browser = find_browser()
    except BrowserNotFound as exc:  # the browser tests will fail with the same message
        print(exc)
        return 0
    if browser is None and "--install" in argv:
        print("No Chrome or Chromium found; trying Playwright's own download (`playwright install chromium`) ...")
        try:
            subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"Playwright's download did not finish: {exc}")
        browser = find_browser()
    if browser is None:
        print(f"No browser for the browser tests: they will be skipped. {HOW_TO_ENABLE}")
    else:
        print(f"Browser tests use {browser}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
