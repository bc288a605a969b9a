"""End to end, as a person does it: the real notebook in JupyterLab, in a real browser.

A temporary copy of the project is served by JupyterLab on 127.0.0.1 in quick mode. Playwright
drives Chrome or Chromium (found by ``find_browser``): it opens ``bmi219_autoencoder.ipynb``,
chooses Run > Run All Cells, waits for the kernel to finish, scrolls back to the explorer, clicks
and drags in it, and checks what the page shows against the decoder and a brute-force neighbour search.
"""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

import ae.explorer as ae_explorer
import ae_helpers as ah
from find_browser import HOW_TO_ENABLE, find_browser
from support import QUICK_ENV, ROOT, copy_project

ARTIFACTS = ROOT / "test-artifacts"
NOTEBOOK = "bmi219_autoencoder.ipynb"
RUN = "default_layers/adam_lr5e-4"  # the run the notebook's explorer shows
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPLORER = ".latent-explorer"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def browser_path():
    path = find_browser()
    if path is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI must run the browser tests, but no browser was found. {HOW_TO_ENABLE}")
        pytest.skip(f"no Chrome or Chromium: {HOW_TO_ENABLE}")
    return path


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("project"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root, tmp_path, disabled_extensions=()):
    """A JupyterLab server on 127.0.0.1 with a token, serving ``root`` in quick mode; yields its URL."""
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    disabled = {"@jupyterlab/apputils-extension:announcements": True, **{e: True for e in disabled_extensions}}
    (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": disabled}))
    port, token = _free_port(), "explorer-test-token"
    env = {
        **os.environ,
        **QUICK_ENV,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    log_path = tmp_path / "lab.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "lab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
                "--LabApp.expose_app_in_browser=True",
                "--allow-root",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            _wait_for_server(server, f"http://127.0.0.1:{port}/api/status?token={token}", log_path)
            yield f"http://127.0.0.1:{port}", token
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_for_server(server, status_url, log_path):
    deadline = time.time() + 90
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(status_url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    server.kill()
    pytest.fail("JupyterLab did not start:\n" + log_path.read_text()[-3000:])


@contextlib.contextmanager
def chromium_page(browser_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


# --- the notebook, through JupyterLab's own objects (window.jupyterapp) -------------------------

PANEL = "window.jupyterapp.shell.currentWidget"
KERNEL_STATUS = f"(() => {{ const k = {PANEL}.sessionContext.session?.kernel; return k ? k.status : null; }})()"


def open_notebook(page, base, token, name):
    page.goto(f"{base}/lab/tree/{name}?token={token}")
    page.wait_for_function(
        f"window.jupyterapp && {PANEL} && {PANEL}.sessionContext "
        f"&& {PANEL}.sessionContext.session?.kernel?.status === 'idle'",
        timeout=120000,
    )


def run_all_from_the_menu(page):
    """Run > Run All Cells, clicked as a person clicks it; returns once the cells are queued."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    page.wait_for_function(
        f"{PANEL}.content.widgets.some(c => c.model.type === 'code' && c.model.executionCount === null)", timeout=30000
    )


def wait_until_finished(page, timeout_s):
    """Until the kernel has been idle for 5 s and every code cell ran, or a cell failed."""
    done = (
        f"{PANEL}.content.widgets.every(c => c.model.type !== 'code' || c.model.executionCount !== null) "
        f"|| {PANEL}.content.model.toJSON().cells.some(c => (c.outputs || []).some(o => o.output_type === 'error'))"
    )
    idle_since, deadline = None, time.time() + timeout_s
    while time.time() < deadline:
        if page.evaluate(KERNEL_STATUS) == "idle" and page.evaluate(done):
            idle_since = idle_since or time.time()
            if time.time() - idle_since > 5:
                return
        else:
            idle_since = None
        time.sleep(1)
    pytest.fail(f"Run All did not finish within {timeout_s} s")


def notebook_json(page):
    return page.evaluate(f"{PANEL}.content.model.toJSON()")


def scroll_to_cell(page, index):
    page.evaluate(f"{PANEL}.content.scrollToItem({index}, 'start')")


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def explorer_cell_index(nb):
    return next(i for i, c in enumerate(nb["cells"]) if "= explore(" in "".join(c["source"]))


# --- what the explorer page shows ---------------------------------------------------------------

READ_IMAGE = """() => {
  const img = document.querySelector('.latent-explorer img.decoded');
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return {w: c.width, h: c.height, data: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
}"""
WATCH_IMAGE = """() => {
  const img = document.querySelector('.latent-explorer img.decoded');
  window.imageChanges = [];
  window.lastMove = null;
  new MutationObserver(() => window.imageChanges.push(performance.now()))
    .observe(img, {attributes: true, attributeFilter: ['src']});
  document.addEventListener('mousemove', () => { window.lastMove = performance.now(); }, true);
}"""


def shown_image(page):
    got = page.evaluate(READ_IMAGE)
    rgba = np.array(got["data"], dtype=np.float32).reshape(got["h"], got["w"], 4)
    return rgba[..., 0] / 255


def shown_point(page):
    return tuple(map(float, re.findall(r"[-+]?\d+\.\d+", page.locator(f"{EXPLORER} .coords").inner_text())))


def shown_neighbours(page):
    texts = page.locator(f"{EXPLORER} .neighbour").all_inner_texts()
    return [(int(t.split()[0]), float(t.split()[-1])) for t in texts]


class Aim:
    """Page coordinates of points given as fractions of the explorer's axes (from the same figure)."""

    def __init__(self, page, reference):
        self.box = page.locator(f"{EXPLORER} .jupyter-matplotlib-canvas-div canvas").first.bounding_box()
        self.bounds = reference.ax.get_position().bounds
        self.xlim, self.ylim = reference.ax.get_xlim(), reference.ax.get_ylim()

    def page_xy(self, fx, fy):
        x0, y0, w, h = self.bounds
        return (
            self.box["x"] + self.box["width"] * (x0 + fx * w),
            self.box["y"] + self.box["height"] * (1 - (y0 + fy * h)),
        )

    def data_xy(self, fx, fy):
        return (self.xlim[0] + fx * (self.xlim[1] - self.xlim[0]), self.ylim[0] + fy * (self.ylim[1] - self.ylim[0]))

    def assert_near(self, point, fx, fy):
        """The decoded point is where the pointer was aimed, within 2% of the axes."""
        aimed = self.data_xy(fx, fy)
        assert abs(point[0] - aimed[0]) < 0.02 * (self.xlim[1] - self.xlim[0]), (point, aimed)
        assert abs(point[1] - aimed[1]) < 0.02 * (self.ylim[1] - self.ylim[0]), (point, aimed)


def assert_page_matches_decoder(page, reference):
    """The page's image is the decoder's output at the shown point; its neighbours, a brute-force search."""
    x, y = shown_point(page)
    expected = ah.decode_to_pixels(reference.model, [[x, y]], reference.data)[0].reshape(28, 28).numpy()
    shown = shown_image(page)
    assert shown.shape == (28, 28)
    assert np.abs(shown - expected).max() < 0.02, (x, y)
    distances = np.linalg.norm(reference.neighbours.codes.numpy() - np.array([x, y]), axis=1)
    nearest = np.argsort(distances, kind="stable")[: reference.k]
    neighbours = shown_neighbours(page)
    assert [label for label, _ in neighbours] == reference.labels[nearest].tolist(), (x, y)
    assert np.allclose([d for _, d in neighbours], distances[nearest], atol=0.006), (x, y)
    return shown


def click_and_check(page, aim, reference, fx, fy):
    previous = page.locator(f"{EXPLORER} .coords").inner_text()
    page.mouse.click(*aim.page_xy(fx, fy))
    page.wait_for_function(
        "prev => document.querySelector('.latent-explorer .coords')?.innerText !== prev", arg=previous, timeout=30000
    )
    page.wait_for_timeout(500)  # the image and neighbours follow the label in the same update
    aim.assert_near(shown_point(page), fx, fy)
    return assert_page_matches_decoder(page, reference)


def slide_and_check(page, reference, axis, key, presses=5):
    """Focus a slider's handle, press an arrow key: the point the sliders name moves along that axis,
    decoded as a click is. Returns the point shown."""
    before = shown_point(page)
    page.locator(f"{EXPLORER} .slider-{axis} .noUi-handle").first.focus()
    for _ in range(presses):
        page.keyboard.press(key)
    page.wait_for_function(
        "prev => document.querySelector('.latent-explorer .coords')?.innerText.includes(prev) === false",
        arg=f"x = {before[0]:.5f}, y = {before[1]:.5f}",
        timeout=30000,
    )
    page.wait_for_timeout(1000)  # the last key's decode
    assert_page_matches_decoder(page, reference)
    return shown_point(page)


def drag_and_check(page, aim, reference, start, end, steps=20):
    """Press at ``start``, move to ``end`` in ``steps`` pauses, release; returns image changes seen."""
    page.evaluate("() => { window.imageChanges = []; }")
    page.mouse.move(*aim.page_xy(*start))
    page.mouse.down()
    for i in range(1, steps + 1):
        f = i / steps
        page.mouse.move(*aim.page_xy(start[0] + f * (end[0] - start[0]), start[1] + f * (end[1] - start[1])))
        page.wait_for_timeout(40)
    changes_while_held = len(page.evaluate("window.imageChanges"))
    page.mouse.up()
    page.wait_for_timeout(1000)
    aim.assert_near(shown_point(page), *end)
    assert_page_matches_decoder(page, reference)
    return changes_while_held


def measure_drag_latency(page, aim, at=(0.5, 0.5), moves=10):
    """Milliseconds from a pointer move (button held) to the page showing the new decoded image."""
    latencies = []
    page.mouse.move(*aim.page_xy(*at))
    pressed = len(page.evaluate("window.imageChanges"))
    page.mouse.down()
    page.wait_for_function(f"window.imageChanges.length > {pressed}", timeout=10000)  # the press's own update
    page.wait_for_timeout(150)
    for i in range(moves):
        before = len(page.evaluate("window.imageChanges"))
        page.mouse.move(*aim.page_xy(at[0] + 0.02 * (i + 1), at[1]))
        page.wait_for_function(f"window.imageChanges.length > {before}", timeout=10000)
        latencies.append(page.evaluate(f"window.imageChanges[{before}] - window.lastMove"))
        page.wait_for_timeout(150)  # past the drag throttle, so the next move updates at once
    page.mouse.up()
    return latencies


# --- the tests ----------------------------------------------------------------------------------


def check_run_all_output(nb, committed):
    """Every cell ran once, in order, without an error, and the explorer's widget is in its own cell only."""
    errors = [
        (i, o.get("ename"), o.get("evalue"))
        for i, c in enumerate(nb["cells"])
        for o in c.get("outputs", [])
        if o["output_type"] == "error"
    ]
    assert errors == []
    assert [c["execution_count"] for c in code_cells(nb)] == list(range(1, len(code_cells(nb)) + 1))
    # The explorer's figure is shown in its own cell only: no later cell prints a static copy of it.
    images = [sum("image/png" in o.get("data", {}) for o in c["outputs"]) for c in code_cells(nb)]
    assert images == [sum("image/png" in o.get("data", {}) for o in c["outputs"]) for c in code_cells(committed)]
    explorer_index = explorer_cell_index(nb)
    explorer_id = next(
        o["data"][WIDGET_VIEW]["model_id"]
        for o in nb["cells"][explorer_index]["outputs"]
        if WIDGET_VIEW in o.get("data", {})
    )
    shown_in = [
        i
        for i, c in enumerate(nb["cells"])
        for o in c.get("outputs", [])
        if o.get("data", {}).get(WIDGET_VIEW, {}).get("model_id") == explorer_id
    ]
    assert shown_in == [explorer_index]
    return explorer_index


def visible_canvas(page, explorer_index):
    """Scroll back to the explorer; its canvas, drawn and of a real size (not a closed figure's)."""
    scroll_to_cell(page, explorer_index)
    page.locator(EXPLORER).scroll_into_view_if_needed()
    canvas = page.locator(f"{EXPLORER} .jupyter-matplotlib-canvas-div canvas").first
    canvas.wait_for(state="visible", timeout=60000)
    page.wait_for_timeout(1500)  # the canvas draws its first frame
    assert page.locator(EXPLORER).count() == 1
    box = canvas.bounding_box()
    assert box["width"] > 300, box
    assert box["height"] > 300, box
    return canvas


def test_after_run_all_the_explorer_decodes_clicks_and_drags(browser_path, project_copy, tmp_path):
    reference = ae_explorer.explore(ROOT / RUN, data=ah.load_mnist(ROOT / "data"))  # the same figure, built here
    committed = json.loads((ROOT / NOTEBOOK).read_text())
    ARTIFACTS.mkdir(exist_ok=True)
    with jupyterlab(project_copy, tmp_path) as (base, token), chromium_page(browser_path) as page:
        open_notebook(page, base, token, NOTEBOOK)
        started = time.time()
        run_all_from_the_menu(page)
        wait_until_finished(page, timeout_s=1800)  # a hang detector, not a time limit: a loaded machine is slow
        run_all_seconds = time.time() - started
        explorer_index = check_run_all_output(notebook_json(page), committed)
        visible_canvas(page, explorer_index)
        page.evaluate(WATCH_IMAGE)
        aim = Aim(page, reference)
        first = click_and_check(page, aim, reference, 0.3, 0.65)
        second = click_and_check(page, aim, reference, 0.75, 0.25)
        assert np.abs(first - second).max() > 0.1, "the two clicks showed the same image"
        # The keyboard's way in, no mouse needed: x moves alone, then y alone.
        slid_x = slide_and_check(page, reference, "x", "ArrowLeft")
        slid_y = slide_and_check(page, reference, "y", "ArrowRight")
        assert slid_y[0] == slid_x[0] and slid_y[1] > slid_x[1], (slid_x, slid_y)
        page.locator(EXPLORER).screenshot(path=str(ARTIFACTS / "explorer.png"))
        changes = drag_and_check(page, aim, reference, start=(0.2, 0.3), end=(0.8, 0.7))
        assert changes >= 2, f"the image changed {changes} times during a 20-step drag"
        latencies = measure_drag_latency(page, aim)
    report = {
        "run_all_seconds": round(run_all_seconds, 1),
        "image_changes_during_20_step_drag": changes,
        "drag_update_latency_ms": {
            "median": round(float(np.median(latencies)), 1),
            "max": round(float(np.max(latencies)), 1),
            "n": len(latencies),
        },
    }
    (ARTIFACTS / "explorer_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(report)


def test_without_the_front_end_extension_the_page_shows_what_the_readme_says(browser_path, project_copy, tmp_path):
    """JupyterLab without ipympl's front end (the kernel has it) cannot draw the canvas; the README's
    troubleshooting quotes what the page shows then, and gives the fix."""
    committed = json.loads((ROOT / NOTEBOOK).read_text())
    source = "".join(committed["cells"][explorer_cell_index(committed)]["source"])
    small = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": committed["metadata"],
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": "from ae.explorer import explore\n" + source,
            }
        ],
    }
    (project_copy / "explorer_only.ipynb").write_text(json.dumps(small))
    readme = (ROOT / "README.md").read_text()
    with (
        jupyterlab(project_copy, tmp_path, disabled_extensions=["matplotlib-jupyter:main"]) as (base, token),
        chromium_page(browser_path) as page,
    ):
        open_notebook(page, base, token, "explorer_only.ipynb")
        run_all_from_the_menu(page)
        wait_until_finished(page, timeout_s=180)
        error = page.locator(f"{EXPLORER} .jupyter-widgets-error-widget").first
        error.wait_for(timeout=30000)
        first_sight = error.inner_text()
        error.click()
        page.wait_for_timeout(500)
        details = error.inner_text()
    quoted = re.search(r"page shows `([^`]+)`\*\* \(clicking it shows\s+`([^`]+)`\)", readme)
    assert quoted, "README's troubleshooting does not quote the page's messages"
    assert quoted.group(1) in first_sight
    assert quoted.group(2) in details
    assert "jupyter labextension list" in readme
