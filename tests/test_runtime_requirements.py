"""requirements.txt alone is enough: a fresh venv with only the runtime list executes the whole notebook."""

import json
import subprocess

import nbformat

from runtime_venv import DEV_TOOLS, NOTEBOOK, clean_env, execute_notebook, runtime_venv
from support import ROOT, copy_project


def test_a_venv_from_requirements_txt_alone_executes_the_notebook(tmp_path):
    python = runtime_venv()
    work = tmp_path / "work"
    work.mkdir()
    copy_project(work)
    env = clean_env(python, work)
    present = subprocess.run(
        [str(python), "-c", f"import importlib.util as u; print([m for m in {DEV_TOOLS!r} if u.find_spec(m)])"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert present.stdout.strip() == "[]", "the runtime venv has a development tool: it is not the runtime alone"
    specs = subprocess.run(
        [str(python), "-m", "jupyter", "kernelspec", "list", "--json"], capture_output=True, text=True, env=env
    )
    kernel = json.loads(specs.stdout)["kernelspecs"]["python3"]["spec"]["argv"][0]
    assert kernel == "python" or kernel.startswith(str(python.parent)), f"the kernel is not the venv's: {kernel}"

    finished = execute_notebook(python, work)
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "runtime_venv_nbconvert.log").write_text(finished.stdout + finished.stderr)
    assert finished.returncode == 0, finished.stderr[-4000:]
    nb = nbformat.read(work / "executed.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o.get("ename") for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert all(c.execution_count is not None for c in code)
    assert (work / NOTEBOOK).read_text() == (ROOT / NOTEBOOK).read_text()  # executed into a new file
