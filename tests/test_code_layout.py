"""The code's shape as a student meets it: the layers import one way and the loop comes early.

These tests read the source files, so mutation testing leaves them out (mutmut's copies are rewritten).
"""

import ast

from support import ROOT


def project_imports(path) -> set:
    """The project's modules a file imports (ae_helpers, mnist_files, ae.*), from its source."""
    tree = ast.parse((ROOT / path).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "ae")
    return {n for n in names if n.split(".")[0] in ("ae", "ae_helpers", "mnist_files")}


def test_imports_run_one_way_plumbing_then_ae_helpers_then_the_package():
    assert project_imports("ae/plumbing.py") == set()
    assert project_imports("ae_helpers.py") == {"ae.plumbing", "mnist_files"}
    for path in sorted((ROOT / "ae").glob("*.py")):
        if path.name not in ("plumbing.py", "__init__.py"):
            assert "ae_helpers" in project_imports(path.relative_to(ROOT)), path.name


def test_a_student_finds_the_loop_in_the_first_300_lines_of_a_short_file():
    lines = (ROOT / "ae_helpers.py").read_text().splitlines()
    starts = {line.split("(")[0][4:]: i + 1 for i, line in enumerate(lines) if line.startswith("def ")}
    assert starts["train_epoch"] <= 300 and starts["train"] <= 360, starts
    assert len(lines) <= 720, f"ae_helpers.py has {len(lines)} lines: move what a student need not read to ae/"
