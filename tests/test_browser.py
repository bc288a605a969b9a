"""End to end: JupyterLab in a real browser (Debian's Chromium driven by Playwright).

Opens a notebook that builds the latent explorer from the committed weights,
runs it, clicks two points on the ipympl canvas, and checks that the image
shown in the page is the decoder's output at the coordinates shown in the label.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

import ae_helpers as ah
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
RUN = "default_layers/adam_lr5e-4"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed "
                                "(`make browser` installs it; `make test` does so first)")


def _cell(source):
    return {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": source}


def _notebook():
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "cells": [
                _cell(f"%matplotlib widget\nimport json, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                      f"import ae_helpers as ah\n"
                      f"ex = ah.explore({str(ROOT / RUN)!r}, data=ah.load_mnist({str(ROOT / 'data')!r}))\nex"),
                _cell("print('AXES=' + json.dumps({'bounds': ex.ax.get_position().bounds, "
                      "'xlim': ex.ax.get_xlim(), 'ylim': ex.ax.get_ylim()}))"),
            ]}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with a token, serving a temporary working copy."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "explorer.ipynb").write_text(json.dumps(_notebook()))
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port, token = _free_port(), "explorer-test-token"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    env.pop("AE_QUICK", None)
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.expose_app_in_browser=True", "--allow-root"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
    yield f"{url}/lab/tree/explorer.ipynb?token={token}"
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


READ_IMAGE = """() => {
  const img = document.querySelector('.latent-explorer img');
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return {w: c.width, h: c.height, data: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
}"""


def _shown_image(page):
    got = page.evaluate(READ_IMAGE)
    rgba = np.array(got["data"], dtype=np.float32).reshape(got["h"], got["w"], 4)
    return rgba[..., 0] / 255


def test_clicks_in_jupyterlab_decode_the_clicked_points(jupyterlab):
    from playwright.sync_api import sync_playwright

    run = ah.load_run(ROOT / RUN, require_model=True)
    data = ah.load_mnist(ROOT / "data")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(jupyterlab)
            page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext.session",
                                   timeout=90000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            canvas = page.locator(".jupyter-matplotlib-canvas-div canvas").first
            canvas.wait_for(state="visible", timeout=120000)
            axes_text = page.locator(".jp-OutputArea-output", has_text="AXES=").first
            axes_text.wait_for(timeout=120000)
            axes = json.loads(axes_text.inner_text().split("AXES=", 1)[1].strip())
            page.wait_for_timeout(1000)  # let the canvas draw its first frame
            box = canvas.bounding_box()
            x0, y0, w, h = axes["bounds"]
            (xmin, xmax), (ymin, ymax) = axes["xlim"], axes["ylim"]
            coords = page.locator(".latent-explorer .coords")
            images = []
            for fx, fy in ((0.3, 0.65), (0.75, 0.25)):
                previous = coords.inner_text() if coords.count() else ""
                page.mouse.click(box["x"] + box["width"] * (x0 + fx * w),
                                 box["y"] + box["height"] * (1 - (y0 + fy * h)))
                page.wait_for_function(
                    "prev => { const c = document.querySelector('.latent-explorer .coords');"
                    " return c && c.innerText !== prev; }", arg=previous, timeout=30000)
                page.wait_for_timeout(500)
                label = coords.inner_text()
                x, y = map(float, re.findall(r"[-+]?\d+\.\d+", label))
                # the click landed where it was aimed (within 2% of the axes)
                assert abs(x - (xmin + fx * (xmax - xmin))) < 0.02 * (xmax - xmin), label
                assert abs(y - (ymin + fy * (ymax - ymin))) < 0.02 * (ymax - ymin), label
                shown = _shown_image(page)
                with torch.no_grad():
                    expected = data.to_pixels(run.model.decode(torch.tensor([[x, y]])))[0]
                expected = expected.clamp(0, 1).reshape(28, 28).numpy()
                assert shown.shape == (28, 28)
                assert np.abs(shown - expected).max() < 0.02, label
                images.append(shown)
            assert np.abs(images[0] - images[1]).max() > 0.1, "the two clicks showed the same image"
            page.screenshot(path=str(ARTIFACTS / "explorer.png"))
        finally:
            browser.close()
