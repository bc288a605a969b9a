"""A kernel without ipympl: Run All still finishes, and the explorer cell says what to install."""

import json
import os

import nbclient
import nbformat

from support import QUICK_ENV, ROOT, copy_project

NOTEBOOK = "bmi219_autoencoder.ipynb"


def test_run_all_without_ipympl_finishes_and_the_explorer_says_the_fix(tmp_path):
    work, hidden = tmp_path / "work", tmp_path / "hidden"
    work.mkdir()
    hidden.mkdir()
    copy_project(work)
    (hidden / "ipympl.py").write_text("raise ImportError('No module named ipympl (hidden by the test)')\n")
    nb = nbformat.read(work / NOTEBOOK, as_version=4)
    env = {**os.environ, **QUICK_ENV, "PYTHONPATH": str(hidden)}
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(work)}}
    )
    client.execute(env=env)
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    nbformat.write(nb, ROOT / "test-artifacts" / "notebook_without_ipympl.ipynb")  # to read after a failure
    errors = [
        (i, o.get("ename"), o.get("evalue"))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert errors == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)  # every later cell ran
    explorer = next(c for c in code if "= explore(" in c.source)
    printed = "".join(o.get("text", "") for o in explorer.outputs if o.output_type == "stream")
    assert "no `ipympl`" in printed
    assert "pip install ipympl==0.10.0" in printed
    assert "restart the kernel" in printed
    state = json.dumps(nb.metadata.get("widgets", {}))
    assert "pip install ipympl==0.10.0" in state  # the widget itself shows it too
