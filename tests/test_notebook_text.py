"""The notebook reads as a model answer: short, the answer first, nothing in it for the tooling."""

import re

import nbformat
import pytest

from support import ROOT

NOTEBOOK = ROOT / "bmi219_autoencoder.ipynb"
ANSWER_STARTS = ("**Answer. ", "**What it shows. ", "**What changed. ")


@pytest.fixture(scope="module")
def cells():
    return nbformat.read(NOTEBOOK, as_version=4).cells


def words(cell) -> int:
    return len(re.findall(r"\S+", cell.source))


def test_the_prose_is_short_enough_to_read_in_a_quarter_of_an_hour(cells):
    total = sum(words(c) for c in cells if c.cell_type == "markdown")
    assert total <= 3500, f"{total} words of markdown: at most 3,500"


def test_each_question_is_answered_first_in_bold_and_briefly(cells):
    questions = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## Q")]
    assert len(questions) >= 13
    for i in questions:
        answer = next(c for c in cells[i + 1 :] if c.cell_type == "markdown" and c.source.startswith("**"))
        assert answer.source.startswith(ANSWER_STARTS), cells[i].source.splitlines()[0]
        bold, _, evidence = answer.source[2:].partition("**")
        assert len(re.findall(r"\S+", evidence)) <= 200, f"{cells[i].source.splitlines()[0]}: evidence over 200 words"


def test_the_model_and_a_training_step_by_hand_are_shown(cells):
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert "print(model)" in code and "count_parameters(model)" in code
    for line in ("optimizer.zero_grad()", "loss.backward()", "optimizer.step()", "ah.train_epoch("):
        assert line in code, line


def test_nothing_in_the_cells_serves_the_tooling(cells):
    for cell in cells:
        for marker in ("NBVAL", "AE_QUICK", "QUICK", "save_evidence", "⟨", "make bench", "make results"):
            assert marker not in cell.source, f"cell {cell.id} holds {marker!r}"
    tags = {tag for c in cells for tag in c.metadata.get("tags", [])}
    assert tags <= {"nbval-check-output", "nbval-skip", "nbval-ignore-output"}, tags


def test_no_code_line_is_longer_than_100_characters(cells):
    long = [(c.id, line) for c in cells if c.cell_type == "code" for line in c.source.splitlines() if len(line) > 100]
    assert long == []
