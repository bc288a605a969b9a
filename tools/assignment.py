"""The assignment: which cells of the model answer are graded, and the student handout made from it.

    python tools/assignment.py stamp      # write the nbgrader metadata below onto the model answer's cells
    python tools/assignment.py generate   # stamp, then nbgrader's generate_assignment -> student/

The model answer (bmi219_autoencoder.ipynb) stays a complete, solved notebook: what nbgrader needs is in
cell metadata, invisible while reading it, and stamped from the tables below by cell id. The tables are
the one place that says what is graded and for how many points; ``stamp`` checks them against the notebook
(every cell listed exists, every answer cell is listed, solution regions only in task cells) and
says what to fix. nbgrader runs in a temporary course directory; only the handout is kept.
"""

from __future__ import annotations

import copy
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "bmi219_autoencoder.ipynb"
STUDENT = ROOT / "student"
ASSIGNMENT = "bmi219"  # nbgrader's assignment name (the folder under source/, release/, submitted/)
NBGRADER = "nbgrader==0.9.6"  # what `make assignment` and `make autograde` need (the dev requirements)


@dataclass(frozen=True)
class Answer:
    """A written answer: a markdown cell graded by hand; the handout shows "YOUR ANSWER HERE"."""

    cell_id: str
    title: str
    points: int

    @property
    def grade_id(self) -> str:
        return "answer-" + re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass(frozen=True)
class Task:
    """A code task: the student's cell (its solution regions become stubs that raise NotImplementedError
    with ``stubs``' messages, one per region) and the read-only check cell right after it."""

    cell_id: str
    check_id: str
    title: str
    points: int
    stubs: tuple


# Points: 2 per question's written answer, 1 per shorter interpretation of a figure or table;
# 3 or 4 per code task (the training step has the most ways to go wrong).
ANSWERS = (
    Answer("c005", "Q0.1 seed", 2),
    Answer("c008", "Q1.1 examples", 2),
    Answer("c012", "Q1.2 format", 2),
    Answer("c019", "Q1.3 normalization", 2),
    Answer("c023", "Q1.4 splits", 2),
    Answer("c033", "Q2.1 shuffling", 2),
    Answer("c039", "Q2.2 and Q5.3 batch size", 2),
    Answer("c043", "Q2.3 DataLoader", 2),
    Answer("c047", "Q3.1 activations", 2),
    Answer("c050", "Q5.1 loss", 2),
    Answer("c057", "Q5.2 optimizer", 2),
    Answer("c061", "Q6.1 when done", 2),
    Answer("c068", "Q6.2 no_grad", 2),
    Answer("c072", "Training progress", 1),
    Answer("c077", "Latent space", 1),
    Answer("c085", "Decoded points", 1),
    Answer("c092", "My neural net", 2),
    Answer("c097", "Better recipe", 1),
)
TASKS = (
    Task(
        "task-normalize",
        "check-normalize",
        "Q1.3 task: training_statistics and normalize",
        3,
        (
            "Write training_statistics: return the mean and the std of all pixel values of train_images, "
            "as two Python floats.",
            "Write normalize: subtract mean from images, then divide by std.",
        ),
    ),
    Task(
        "task-training-step",
        "check-training-step",
        "Training step task: training_step",
        4,
        (
            "Write training_step: forward the batch, take the MSE of the reconstruction against the batch, "
            "then optimizer.zero_grad(), loss.backward(), optimizer.step(); return loss.item().",
        ),
    ),
    Task(
        "task-mean-mse",
        "check-mean-mse",
        "Q6.2 task: mean_mse",
        3,
        (
            "Write mean_mse: under torch.no_grad(), reconstruct the images and return the mean squared error "
            "per pixel as a Python float.",
        ),
    ),
    Task(
        "task-decode-point",
        "check-decode-point",
        "Explorer task: decode_point",
        3,
        (
            "Write decode_point: decode the code [[x, y]] with model.decode, undo the normalization with "
            "data.to_pixels, clip to [0, 1], and return a (28, 28) NumPy array.",
        ),
    ),
    Task(
        "task-my-layers",
        "check-my-layers",
        "My net task: MY_LAYER_SIZES",
        3,
        (
            "Set MY_LAYER_SIZES to your encoder's layer sizes: a tuple of positive ints from the first hidden "
            "layer down to the 2-D code, e.g. (256, 2).",
        ),
    ),
)
# A markdown cell that starts with one of these is a written answer: ANSWERS must list it.
ANSWER_MARKS = ("**Answer.", "**What it shows.", "**What changed.")
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"

# The handout's first cell: student/ holds only the notebook; the code, the saved runs and MNIST are read
# from the project's root folder, one level up.
SETUP_ID = "student-setup"
SETUP_SOURCE = """\
# The handout sits in student/; the code it imports and the saved runs it reads are in the folder above.
import os
import sys

if not os.path.exists("ae_helpers.py") and os.path.exists(os.path.join("..", "ae_helpers.py")):
    os.chdir("..")
sys.path.insert(0, os.getcwd())"""


class AssignmentError(Exception):
    """A mismatch between the tables above and the notebook; the message names the cell and the fix."""


# ----------------------------------------------------------------------------
# Stamping the model answer
# ----------------------------------------------------------------------------


def nbgrader_metadata(kind, grade_id, points=None) -> dict:
    """nbgrader's cell metadata (schema 3) for a written answer, a task cell or a check cell."""
    grade, solution, locked = {
        "answer": (True, True, False),
        "task": (False, True, False),
        "check": (True, False, True),
    }[kind]
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution}
    meta["task"] = False
    if grade:
        meta["points"] = points
    return meta


def graded_cells() -> dict:
    """cell id -> (cell type, nbgrader metadata), for every graded cell in the tables."""
    cells = {a.cell_id: ("markdown", nbgrader_metadata("answer", a.grade_id, a.points)) for a in ANSWERS}
    for task in TASKS:
        cells[task.cell_id] = ("code", nbgrader_metadata("task", task.cell_id))
        cells[task.check_id] = ("code", nbgrader_metadata("check", task.check_id, task.points))
    return cells


def stamp(nb) -> None:
    """Set (or remove) every cell's nbgrader metadata as the tables say; raise AssignmentError on a mismatch."""
    check(nb)
    wanted = graded_cells()
    for cell in nb.cells:
        if cell.id in wanted:
            cell.metadata["nbgrader"] = wanted[cell.id][1]
        else:
            cell.metadata.pop("nbgrader", None)


def check(nb) -> None:
    """The tables against the notebook: each problem named with its fix, all at once."""
    problems = []
    by_id = {cell.id: (i, cell) for i, cell in enumerate(nb.cells)}
    for cell_id, (cell_type, _) in graded_cells().items():
        if cell_id not in by_id:
            problems.append(f"cell {cell_id} is listed in tools/assignment.py but not in the notebook")
        elif by_id[cell_id][1].cell_type != cell_type:
            problems.append(f"cell {cell_id} must be a {cell_type} cell")
    listed = {a.cell_id for a in ANSWERS}
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith(ANSWER_MARKS) and cell.id not in listed:
            problems.append(f"cell {cell.id} starts like an answer ({cell.source[:16]}...) but is not in ANSWERS")
    task_ids = {task.cell_id for task in TASKS}
    for cell in nb.cells:
        regions = cell.source.count(BEGIN)
        if regions and cell.id not in task_ids:
            problems.append(f"cell {cell.id} has a solution region but is not a task in TASKS")
        if regions != cell.source.count(END):
            problems.append(f"cell {cell.id}: every {BEGIN} needs its {END}")
    for task in TASKS:
        if task.cell_id in by_id and task.check_id in by_id:
            index, cell = by_id[task.cell_id]
            if by_id[task.check_id][0] != index + 1:
                problems.append(f"check cell {task.check_id} must come right after {task.cell_id}")
            if cell.source.count(BEGIN) != len(task.stubs):
                problems.append(f"cell {task.cell_id} needs {len(task.stubs)} solution region(s), one per stub")
    if problems:
        raise AssignmentError("; ".join(problems) + ". Fix the notebook or the tables in tools/assignment.py.")


def read_notebook(path):
    return nbformat.read(path, as_version=4)


def notebook_text(nb) -> str:
    """The notebook as Jupyter writes it (so that stamping an already stamped notebook changes no byte)."""
    return nbformat.writes(nb) + "\n"


def write_atomically(path, text) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename: never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{id(text)}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def stamp_file(path=NOTEBOOK) -> bool:
    """Stamp the model answer in place; True if its metadata changed."""
    nb = read_notebook(path)
    before = notebook_text(nb)
    stamp(nb)
    after = notebook_text(nb)
    if after != before:
        write_atomically(path, after)
    return after != before


# ----------------------------------------------------------------------------
# The handout
# ----------------------------------------------------------------------------


def handout_source(nb):
    """What nbgrader gets as the assignment's source: the stamped model answer without outputs, run
    metadata or widget state, without the notebook-test tags, and with the handout's setup cell."""
    nb = copy.deepcopy(nb)
    stamp(nb)
    nb.metadata = nbformat.NotebookNode(
        {k: nb.metadata[k] for k in ("kernelspec", "language_info") if k in nb.metadata}
    )
    for cell in nb.cells:
        cell.metadata = nbformat.NotebookNode({k: v for k, v in cell.metadata.items() if k == "nbgrader"})
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    setup = nbformat.v4.new_code_cell(SETUP_SOURCE)
    setup.id = SETUP_ID
    nb.cells.insert(1, setup)
    return nb


def nbgrader_config(course_dir):
    """nbgrader's configuration for a temporary course directory; task stubs say what to write."""
    from nbgrader.converters import GenerateAssignment
    from traitlets.config import Config

    config = Config()
    config.CourseDirectory.root = str(course_dir)
    config.CourseDirectory.db_url = f"sqlite:///{Path(course_dir) / 'gradebook.db'}"
    stubs = _task_stubs_class()  # in place of ClearSolutions
    preprocessors = GenerateAssignment.preprocessors.default()
    config.GenerateAssignment.preprocessors = [stubs if p.__name__ == "ClearSolutions" else p for p in preprocessors]
    return config


def _task_stubs_class():
    from nbgrader.preprocessors import ClearSolutions

    class TaskStubs(ClearSolutions):
        """ClearSolutions whose stub in each task cell raises NotImplementedError with that task's message."""

        def preprocess_cell(self, cell, resources, index):
            task = next((t for t in TASKS if t.cell_id == cell.get("id")), None)
            if task is None:
                return super().preprocess_cell(cell, resources, index)
            cell.source = replace_regions(cell.source, task.stubs)
            return cell, resources

    return TaskStubs


def replace_regions(source, messages) -> str:
    """Each solution region of ``source`` -> a stub raising NotImplementedError(message), indented alike."""
    messages = list(messages)
    lines, out, inside = source.split("\n"), [], False
    for line in lines:
        if BEGIN in line:
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError({messages.pop(0)!r})"]
            inside = True
        elif END in line:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def generate(dest=STUDENT, notebook=NOTEBOOK) -> Path:
    """nbgrader's generate_assignment on the model answer, in a temporary course directory; the handout
    notebook is written to ``dest``. Returns its path."""
    with tempfile.TemporaryDirectory(prefix="ae-assignment-") as course:
        release = run_generate(Path(course), read_notebook(notebook))
        Path(dest).mkdir(parents=True, exist_ok=True)
        target = Path(dest) / NOTEBOOK.name
        write_atomically(target, notebook_text(read_notebook(release)))
    return target


def run_generate(course: Path, nb) -> Path:
    """Lay out ``course`` (source/<assignment>/), run generate_assignment there; the released notebook's path.

    The gradebook it fills (course/gradebook.db) is what ``nbgrader autograde`` grades against."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    nbgrader_environment()
    source = course / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    (source / NOTEBOOK.name).write_text(notebook_text(handout_source(nb)), encoding="utf-8")
    config = nbgrader_config(course)
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = ASSIGNMENT
    app = GenerateAssignment(coursedir=coursedir, config=config)
    app.force, app.create_assignment = True, True
    _quiet(app)
    app.start()
    return course / "release" / ASSIGNMENT / NOTEBOOK.name


def nbgrader_environment() -> None:
    """nbgrader runs `alembic` (its gradebook's migrations) from PATH: the one beside this Python."""
    import os

    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _quiet(app) -> None:
    """nbgrader's converters log every step at INFO; keep warnings and errors."""
    import logging

    app.log.setLevel(logging.WARNING)


def require_nbgrader() -> None:
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        sys.exit(f"nbgrader is not installed in this environment: run `.venv/bin/pip install {NBGRADER}`.")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    try:
        if command == "stamp":
            print("stamped" if stamp_file() else "already stamped", NOTEBOOK.name)
        elif command == "generate":
            require_nbgrader()
            stamp_file()
            path = generate()
            print(f"wrote {path.relative_to(ROOT)}")
        else:
            print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
            return 2
    except AssignmentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
