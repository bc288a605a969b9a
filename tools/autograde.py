"""Grade one submitted notebook with nbgrader's autograder, in quick mode: `make autograde SUBMISSION=...`.

    python tools/autograde.py path/to/bmi219_autoencoder.ipynb

A temporary nbgrader course directory is made from the model answer (tools/assignment.py), the submission
is autograded there with a kernel in quick mode (tools/quick_mode.py) that runs in the project's root
folder, and each graded cell's points are printed: the code tasks (autograded) and the written answers
(to grade by hand) apart. Exit status 0 when grading ran, whatever the score; 1, with a one-line message
that names the problem, when the submission cannot be graded.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assignment  # noqa: E402  (tools/ is not a package)

ROOT = assignment.ROOT
STUDENT_ID = "student"
CELL_TIMEOUT_S = 1800  # per cell; quick mode's longest cell takes about a minute on 2 CPU cores


class SubmissionError(Exception):
    """The submission cannot be graded; the message names the problem and the fix."""


@dataclass
class Row:
    """One graded cell's result: ``score`` None while it waits for a grader."""

    title: str
    autograded: bool
    score: float | None
    max_score: float
    note: str = ""


def read_submission(path) -> nbformat.NotebookNode:
    """The submitted notebook, or a SubmissionError saying why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"no file at {path}: give the path of the submitted notebook (SUBMISSION=...).")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as error:  # JSON, encoding or schema: all mean "not a notebook"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SubmissionError(
            f"{path} is not a Jupyter notebook ({first_line[:100]}): submit the .ipynb file saved from JupyterLab."
        ) from None
    return nb


def grade_ids(nb) -> dict:
    """grade_id -> cell, for the cells nbgrader grades or checks (answers, tasks, checks)."""
    return {
        cell.metadata["nbgrader"]["grade_id"]: cell
        for cell in nb.cells
        if cell.metadata.get("nbgrader", {}).get("grade_id")
    }


def compare_with_release(submitted, release, source) -> list:
    """Notes on check cells the student changed (nbgrader grades with the originals); a SubmissionError
    when graded cells are missing. A check cell is unchanged when it is the released one, or the source's
    with its hidden tests (the model answer itself)."""
    mine, released, original = grade_ids(submitted), grade_ids(release), grade_ids(source)
    missing = [grade_id for grade_id in released if grade_id not in mine]
    if missing:
        raise SubmissionError(
            f"the submission lacks the graded cells {', '.join(missing)} (deleted, or pasted without their "
            "metadata): copy the answers into a fresh copy of student/bmi219_autoencoder.ipynb and submit that."
        )
    checks = [task.check_id for task in assignment.TASKS]
    return [
        f"check cell {grade_id} was changed in the submission; it is graded with the original."
        for grade_id in checks
        if mine[grade_id].source not in (released[grade_id].source, original[grade_id].source)
    ]


def kernel_startup(course: Path) -> Path:
    """An IPYTHONDIR whose startup file puts the kernel in the project's root folder (what the notebook
    imports and reads is there, whatever folder nbgrader runs it in) and in quick mode."""
    startup = course / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-grading.py").write_text(
        "import os as _os, sys as _sys\n"
        f"_os.chdir({str(ROOT)!r})\n"
        f"_sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tools')!r}]\n"
        "import quick_mode as _quick_mode\n"
        "_quick_mode.activate()\n"
    )
    return course / "ipython"


def autograde(submission: Path, course: Path) -> Path:
    """Autograde ``submission`` in ``course`` (generated already); the graded notebook's path."""
    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory

    submitted = course / "submitted" / STUDENT_ID / assignment.ASSIGNMENT
    submitted.mkdir(parents=True)
    shutil.copy(submission, submitted / assignment.NOTEBOOK.name)
    os.environ.update(AE_QUICK="1", IPYTHONDIR=str(kernel_startup(course)))  # what the kernel inherits
    config = assignment.nbgrader_config(course)
    config.Execute.timeout = CELL_TIMEOUT_S
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id, coursedir.student_id = assignment.ASSIGNMENT, STUDENT_ID
    app = Autograde(coursedir=coursedir, config=config)
    app.force, app.create_student = True, True
    assignment._quiet(app)
    try:
        app.start()
    except Exception as error:
        raise SubmissionError(f"nbgrader could not grade it: {str(error).strip().splitlines()[0]}") from None
    return course / "autograded" / STUDENT_ID / assignment.ASSIGNMENT / assignment.NOTEBOOK.name


def results(course: Path, graded: Path) -> list:
    """The gradebook's scores in notebook order, titled as in tools/assignment.py; a failed check's row
    carries its error line, a written answer's row says when it was left blank."""
    from nbgrader.api import Gradebook

    checks = {task.check_id: task.title for task in assignment.TASKS}
    titles = {**checks, **{answer.grade_id: answer.title for answer in assignment.ANSWERS}}
    graded_cells = grade_ids(assignment.read_notebook(graded))
    with Gradebook(assignment.nbgrader_config(course).CourseDirectory.db_url) as gradebook:
        notebook = gradebook.find_submission_notebook(assignment.NOTEBOOK.stem, assignment.ASSIGNMENT, STUDENT_ID)
        scores = {grade.name: grade for grade in notebook.grades}
        rows = []
        for grade_id, cell in graded_cells.items():
            if grade_id not in titles:
                continue  # a task cell: its check cell carries the points
            grade = scores[grade_id]
            if grade_id in checks:
                rows.append(Row(titles[grade_id], True, grade.score, grade.max_score, first_error(cell)))
            else:
                score = None if grade.needs_manual_grade else grade.score
                rows.append(Row(titles[grade_id], False, score, grade.max_score, "" if score is None else "left blank"))
    return rows


def first_error(cell) -> str:
    """'Name: first line of the message' of a cell's error output, or ''."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            message = (output.get("evalue") or "").strip().splitlines()
            return f"{output.get('ename')}: {message[0] if message else ''}"[:160]
    return ""


def report(rows, notes=()) -> str:
    """The table `make autograde` prints."""
    width = max(len(row.title) for row in rows) + 2
    lines = [f"note: {note}" for note in notes]
    for autograded, heading in ((True, "Autograded (code tasks)"), (False, "To grade by hand (written answers)")):
        part = [row for row in rows if row.autograded == autograded]
        lines.append(heading)
        for row in part:
            score = "  ?" if row.score is None else f"{row.score:3g}"
            lines.append(f"  {row.title:<{width}}{score} / {row.max_score:g}" + (f"   {row.note}" if row.note else ""))
        total = sum(row.max_score for row in part)
        if autograded:
            lines.append(f"  {'total':<{width}}{sum(row.score for row in part):3g} / {total:g}")
        else:
            waiting = sum(row.score is None for row in part)
            lines.append(f"  {'total':<{width}}{waiting} of {len(part)} answers to grade, {total:g} points")
    return "\n".join(lines)


def grade(submission, course=None):
    """(rows, notes, graded notebook path) for ``submission``, graded in ``course`` (default: a temporary
    folder, removed afterwards; then the graded notebook's path is None)."""
    assignment.require_nbgrader()
    warnings.filterwarnings("ignore", message=".*not in session", module="nbgrader")  # nbgrader on SQLAlchemy 2
    submitted = read_submission(submission)
    if course is None:
        with tempfile.TemporaryDirectory(prefix="ae-autograde-") as tmp:
            rows, notes, _ = grade(submission, tmp)
            return rows, notes, None
    course = Path(course)
    release = assignment.run_generate(course, assignment.read_notebook(assignment.NOTEBOOK))
    source = course / "source" / assignment.ASSIGNMENT / assignment.NOTEBOOK.name
    notes = compare_with_release(submitted, *map(assignment.read_notebook, (release, source)))  # before the run
    graded = autograde(Path(submission), course)
    return results(course, graded), notes, graded


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: make autograde SUBMISSION=path/to/notebook.ipynb", file=sys.stderr)
        return 2
    try:
        rows, notes, _ = grade(argv[0])
    except (SubmissionError, assignment.AssignmentError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report(rows, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
