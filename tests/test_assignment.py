"""The assignment: the handout nbgrader makes from the model answer, and the autograder's verdicts.

Grading runs a notebook in quick mode: the model answer and the handout are graded once each, whole
(module-scoped fixtures); other formulations are graded as a small notebook of the graded cells, and the
wrong ones by running the check cells (with their hidden tests) in this process, which is what nbgrader
scores: a check cell that raises gets 0 points.
"""

import copy
import functools
import os
import re
import subprocess
import sys
import types

import assignment
import autograde
import nbformat
import numpy as np
import pytest
import torch

import ae_helpers as ah
from ae import metrics
from support import ROOT

try:
    import nbgrader  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        raise ImportError(
            f"CI must run the assignment tests: install the dev requirements ({assignment.NBGRADER})."
        ) from None
    pytest.skip(f"nbgrader is not installed: .venv/bin/pip install {assignment.NBGRADER}", allow_module_level=True)

TASKS = {task.cell_id: task for task in assignment.TASKS}
CHECK_POINTS = sum(task.points for task in assignment.TASKS)


@functools.cache
def _model_answer():
    return assignment.read_notebook(assignment.NOTEBOOK)


def model_answer():
    return copy.deepcopy(_model_answer())


def handout():
    return assignment.read_notebook(assignment.STUDENT / assignment.NOTEBOOK.name)


def cell(nb, cell_id):
    return next(c for c in nb.cells if c.id == cell_id)


# ----------------------------------------------------------------------------
# The tables, the metadata, the handout (no grading)
# ----------------------------------------------------------------------------


def test_model_answer_carries_the_metadata_the_tables_say():
    nb = model_answer()
    stamped = copy.deepcopy(nb)
    assignment.stamp(stamped)
    assert assignment.notebook_text(stamped) == assignment.notebook_text(nb), "run `make assignment` and commit"
    graded = [c for c in nb.cells if "nbgrader" in c.metadata]
    assert len(graded) == len(assignment.ANSWERS) + 2 * len(assignment.TASKS)


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda nb: nb.cells.remove(cell(nb, "check-mean-mse")), "check-mean-mse"),
        (lambda nb: nb.cells.append(nbformat.v4.new_markdown_cell("**Answer.** new", id="new-answer")), "new-answer"),
        (lambda nb: setattr(cell(nb, "c010"), "source", "### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), "c010"),
        (
            lambda nb: nb.cells.insert(nb.cells.index(cell(nb, "task-normalize")) + 1, cell(nb, "c010")),
            "right after",
        ),
    ],
)
def test_stamping_names_the_cell_that_does_not_fit_the_tables(change, named):
    nb = model_answer()
    change(nb)
    with pytest.raises(assignment.AssignmentError, match=named):
        assignment.stamp(nb)


def test_committed_handout_is_exactly_what_the_model_answer_generates(tmp_path):
    generated = assignment.generate(tmp_path)
    committed = assignment.STUDENT / assignment.NOTEBOOK.name
    assert generated.read_bytes() == committed.read_bytes(), "student/ is stale: run `make assignment` and commit"


def test_handout_holds_no_answer_sentence_and_no_solution_code():
    model, student = model_answer(), handout()
    text = "\n".join(c.source for c in student.cells)
    task_cells = [cell(student, cell_id) for task in assignment.TASKS for cell_id in (task.cell_id, task.check_id)]
    code_lines = {line.strip() for c in task_cells for line in c.source.splitlines()}  # where a leak would be
    for answer in assignment.ANSWERS:
        assert cell(student, answer.cell_id).source == "YOUR ANSWER HERE"
        for line in cell(model, answer.cell_id).source.splitlines():
            assert len(line) < 30 or line not in text, f"answer {answer.title} leaks into the handout: {line!r}"
    for task in assignment.TASKS:
        source = cell(model, task.cell_id).source + cell(model, task.check_id).source
        secret = [
            part.split("### END")[0]
            for marker in (assignment.BEGIN, "### BEGIN HIDDEN TESTS")
            for part in source.split(marker)[1:]
        ]
        assert secret, f"{task.cell_id}: no solution region found"
        for line in "\n".join(secret).splitlines()[1:]:
            code = line.strip()  # a line of brackets alone says nothing
            assert not re.search(r"\w", code) or code not in code_lines, f"{task.cell_id} leaks: {line!r}"
        stub = cell(student, task.cell_id).source
        assert stub.count("raise NotImplementedError(") == len(task.stubs), f"{task.cell_id} has no stub"


def test_handout_stubs_raise_what_to_write():
    for task in assignment.TASKS:
        namespace = {"np": np, "torch": torch}
        source = cell(handout(), task.cell_id).source
        if task.cell_id == "task-my-layers":
            with pytest.raises(NotImplementedError, match="MY_LAYER_SIZES"):
                exec(source, namespace)
            continue
        exec(source, namespace)
        functions = [v for k, v in namespace.items() if isinstance(v, types.FunctionType)]
        messages = []
        for function in functions:
            with pytest.raises(NotImplementedError) as raised:
                function(*[None] * function.__code__.co_argcount)
            messages.append(str(raised.value))
            assert function.__name__ in str(raised.value), f"the stub of {function.__name__} does not name it"
        assert messages == list(task.stubs)


def test_handout_opened_in_student_folder_runs_from_the_project_root():
    """JupyterLab starts the kernel in the notebook's folder, student/: the first cell moves it to the root."""
    setup = cell(handout(), assignment.SETUP_ID).source
    assert handout().cells[1].id == assignment.SETUP_ID
    script = setup + "\nimport ae_helpers, ae.runs\nprint(os.getcwd())"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=assignment.STUDENT,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.stdout.strip() == str(ROOT)


def test_grading_refuses_what_is_not_a_submission_with_one_line(tmp_path):
    not_json = tmp_path / "a.ipynb"
    not_json.write_text("print('hello')")
    handout_without_a_check = handout()
    handout_without_a_check.cells.remove(cell(handout_without_a_check, "check-training-step"))
    deleted = tmp_path / "deleted.ipynb"
    nbformat.write(handout_without_a_check, deleted)
    expected = {
        tmp_path / "missing.ipynb": "no file at",
        not_json: "is not a Jupyter notebook",
        deleted: "check-training-step",
    }
    for path, message in expected.items():
        with pytest.raises(autograde.SubmissionError, match=message) as raised:
            autograde.grade(path, tmp_path / f"course-{path.stem}")
        assert "\n" not in str(raised.value)


def test_autograde_command_prints_one_line_and_exits_1_on_garbage(tmp_path, capsys):
    (tmp_path / "notes.ipynb").write_text("{}")
    assert autograde.main([str(tmp_path / "notes.ipynb")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------
# Check cells run here: wrong solutions fail them, other correct ones pass
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checks_namespace():
    """What the check cells read from the notebook: data, raw pixels, a model as `main.model`, modules."""
    torch.manual_seed(0)
    main = types.SimpleNamespace(model=ah.Autoencoder((64, 2)))
    data, raw = ah.load_mnist(ROOT / "data"), ah.load_mnist(ROOT / "data", normalize=False)
    modules = {"ah": ah, "copy": copy, "F": torch.nn.functional, "np": np, "torch": torch, "metrics": metrics}
    return {**modules, "data": data, "raw": raw, "main": main}


def run_check(namespace, task_id, solution):
    """Run the model answer's check cell of ``task_id`` (hidden tests included) on ``solution``'s code."""
    scope = dict(namespace)
    exec(solution, scope)
    exec(cell(model_answer(), TASKS[task_id].check_id).source, scope)


def pixel_stats(images):
    return images.mean().item(), images.std().item()


WRONG = {
    "task-normalize": {
        "hard-coded statistics": "def training_statistics(x):\n    return 0.1307, 0.3081\n"
        "def normalize(x, m, s):\n    return (x - m) / s",
        "statistics of the test set": "def training_statistics(x):\n    return raw.test_images.mean().item(), "
        "raw.test_images.std().item()\ndef normalize(x, m, s):\n    return (x - m) / s",
        "tensors, not floats": "def training_statistics(x):\n    return x.mean(), x.std()\n"
        "def normalize(x, m, s):\n    return (x - m) / s",
        "divides before subtracting": "def training_statistics(x):\n    return x.mean().item(), x.std().item()\n"
        "def normalize(x, m, s):\n    return x / s - m",
        "ignores its arguments": "def training_statistics(x):\n    return x.mean().item(), x.std().item()\n"
        "def normalize(x, m, s):\n    return (x - data.pixel_mean) / data.pixel_std",
    },
    "task-training-step": {
        "no zero_grad": "def training_step(model, optimizer, batch):\n"
        "    loss = torch.nn.functional.mse_loss(model(batch), batch)\n"
        "    loss.backward()\n    optimizer.step()\n    return loss.item()",
        "L1 loss": "def training_step(model, optimizer, batch):\n"
        "    loss = torch.nn.functional.l1_loss(model(batch), batch)\n"
        "    optimizer.zero_grad()\n    loss.backward()\n    optimizer.step()\n    return loss.item()",
        "no step": "def training_step(model, optimizer, batch):\n"
        "    loss = torch.nn.functional.mse_loss(model(batch), batch)\n"
        "    optimizer.zero_grad()\n    loss.backward()\n    return loss.item()",
        "returns the tensor": "def training_step(model, optimizer, batch):\n"
        "    loss = torch.nn.functional.mse_loss(model(batch), batch)\n"
        "    optimizer.zero_grad()\n    loss.backward()\n    optimizer.step()\n    return loss",
    },
    "task-mean-mse": {
        "builds a graph": "def mean_mse(model, images):\n"
        "    return torch.nn.functional.mse_loss(model(images), images).item()",
        "mean of unequal batch means": "def mean_mse(model, images):\n    with torch.no_grad():\n"
        "        means = [torch.nn.functional.mse_loss(model(b), b) for b in images.split(1000)]\n"
        "    return torch.stack(means).mean().item()",
        "sum, not mean": "def mean_mse(model, images):\n    with torch.no_grad():\n"
        "        return ((model(images) - images) ** 2).sum().item()",
    },
    "task-decode-point": {
        "normalized units": "def decode_point(model, x, y, data):\n    with torch.no_grad():\n"
        "        return model.decode(torch.tensor([[x, y]])).clamp(0, 1).reshape(28, 28).numpy()",
        "not clipped": "def decode_point(model, x, y, data):\n    with torch.no_grad():\n"
        "        return data.to_pixels(model.decode(torch.tensor([[x, y]]))).reshape(28, 28).numpy()",
        "flat tensor": "def decode_point(model, x, y, data):\n    with torch.no_grad():\n"
        "        return data.to_pixels(model.decode(torch.tensor([[x, y]]))).clamp(0, 1)[0]",
    },
    "task-my-layers": {
        "3-D code": "MY_LAYER_SIZES = (500, 200, 3)",
        "a list": "MY_LAYER_SIZES = [500, 200, 2]",
        "linear, no better than PCA": "MY_LAYER_SIZES = (2,)",
    },
}


@pytest.mark.parametrize(
    "task_id, solution",
    [
        pytest.param(task_id, solution, id=f"{task_id}: {name}")
        for task_id, cases in WRONG.items()
        for name, solution in cases.items()
    ],
)
def test_a_wrong_solution_fails_its_check_cell(checks_namespace, task_id, solution):
    with pytest.raises(AssertionError) as failed:
        run_check(checks_namespace, task_id, solution)
    assert str(failed.value), "a failed check must say what is wrong"


# Correct, and written otherwise than the model answer's solutions.
OTHER_CORRECT = {
    "task-normalize": "def training_statistics(train_images):\n"
    "    pixels = train_images.double().flatten()\n"
    "    return float(pixels.mean()), float(((pixels - pixels.mean()) ** 2).sum() / (len(pixels) - 1)) ** 0.5\n"
    "def normalize(images, mean, std):\n    return images.sub(mean).div(std)",
    "task-training-step": "def training_step(model, optimizer, batch):\n"
    "    optimizer.zero_grad(set_to_none=True)\n"
    "    reconstruction = model.decoder(model.encoder(batch))\n"
    "    loss = ((reconstruction - batch) ** 2).mean()\n"
    "    loss.backward()\n    optimizer.step()\n    return float(loss.detach())",
    "task-mean-mse": "def mean_mse(model, images):\n    total = 0.0\n    with torch.inference_mode():\n"
    "        for batch in images.split(3000):\n"
    "            total += torch.nn.functional.mse_loss(model(batch), batch, reduction='sum').item()\n"
    "    return total / images.numel()",
    "task-decode-point": "def decode_point(model, x, y, data):\n    with torch.no_grad():\n"
    "        out = model.decoder(torch.as_tensor([x, y], dtype=torch.float32)[None])\n"
    "    return np.clip((out * data.std + data.mean).numpy().reshape(28, 28), 0.0, 1.0)",
    "task-my-layers": "MY_LAYER_SIZES = (256, 64, 2)",
}


def other_correct_notebook():
    """The graded cells of the handout, OTHER_CORRECT in the task cells, what the checks read first, and
    one check cell changed (nbgrader must grade with the original)."""
    nb = handout()
    setup = (
        "import copy\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n"
        "import ae_helpers as ah\nfrom ae import metrics, runs\n"
        "data, raw = ah.load_mnist(), ah.load_mnist(normalize=False)\n"
        'main = runs.get_run("default_layers/adam_lr5e-4", data)'
    )
    graded = [c for c in nb.cells if "nbgrader" in c.metadata]
    for c in graded:
        if c.id in OTHER_CORRECT:
            c.source = OTHER_CORRECT[c.id]
    cell(nb, "check-decode-point").source = "assert False, 'a changed check cell'"
    nb.cells = [nbformat.v4.new_code_cell(setup, id="setup"), *graded]
    return nb


def test_other_correct_solutions_pass_the_check_cells_here(checks_namespace):
    for task_id, solution in OTHER_CORRECT.items():
        if task_id != "task-my-layers":  # trained below, once, by nbgrader
            run_check(checks_namespace, task_id, solution)


# ----------------------------------------------------------------------------
# nbgrader's autograder on whole notebooks (quick mode)
# ----------------------------------------------------------------------------


def graded(tmp_path_factory, name, nb_or_path):
    course = tmp_path_factory.mktemp(f"course-{name}")
    path = nb_or_path
    if not isinstance(nb_or_path, os.PathLike):
        path = course.parent / f"{name}.ipynb"
        nbformat.write(nb_or_path, path)
    rows, notes, graded_path = autograde.grade(path, course)
    return rows, notes, assignment.read_notebook(graded_path)


@pytest.fixture(scope="module")
def model_answer_graded(tmp_path_factory):
    return graded(tmp_path_factory, "model", assignment.NOTEBOOK)


@pytest.fixture(scope="module")
def handout_graded(tmp_path_factory):
    return graded(tmp_path_factory, "handout", assignment.STUDENT / assignment.NOTEBOOK.name)


def autograded_scores(rows):
    return {row.title: (row.score, row.max_score) for row in rows if row.autograded}


def test_model_answer_scores_full_marks_on_every_task(model_answer_graded):
    rows, notes, _ = model_answer_graded
    assert notes == []
    assert autograded_scores(rows) == {t.title: (t.points, t.points) for t in assignment.TASKS}, autograde.report(rows)
    written = [row for row in rows if not row.autograded]
    assert [row.title for row in written] == [a.title for a in assignment.ANSWERS]
    assert all(row.score is None for row in written), "every written answer waits for a grader"


def test_handout_scores_zero_and_every_answer_is_blank(handout_graded):
    rows, _, _ = handout_graded
    assert autograded_scores(rows) == {t.title: (0, t.points) for t in assignment.TASKS}, autograde.report(rows)
    assert all(row.score == 0 and row.note == "left blank" for row in rows if not row.autograded)
    report = autograde.report(rows)
    assert f"  0 / {CHECK_POINTS}" in report and f"0 of {len(assignment.ANSWERS)} answers to grade" in report


def test_handout_runs_to_the_first_stub_and_each_stub_says_what_to_write(handout_graded):
    _, _, nb = handout_graded
    first_task = next(i for i, c in enumerate(nb.cells) if c.id in TASKS)
    for c in nb.cells[:first_task]:
        assert autograde.first_error(c) == "", f"cell {c.id}, before the first task, fails: {autograde.first_error(c)}"
    for task in assignment.TASKS:
        errors = [autograde.first_error(cell(nb, task.cell_id)), autograde.first_error(cell(nb, task.check_id))]
        first = next(e for e in errors if e)
        assert first == f"NotImplementedError: {task.stubs[0]}"[:160], (task.cell_id, errors)


def test_other_correct_solutions_score_full_marks_and_a_changed_check_is_graded_as_released(tmp_path_factory):
    rows, notes, nb = graded(tmp_path_factory, "other-correct", other_correct_notebook())
    assert autograded_scores(rows) == {t.title: (t.points, t.points) for t in assignment.TASKS}, autograde.report(rows)
    assert notes == ["check cell check-decode-point was changed in the submission; it is graded with the original."]
    assert "validation MSE" in "".join(o.get("text", "") for o in cell(nb, "check-my-layers").outputs)
