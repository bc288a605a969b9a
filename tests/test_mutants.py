"""The mutation-testing tool (tools/mutants.py): the core is read from pyproject.toml, results follow a
function that moves, and every piece mutmut cannot mutate has a test."""

import mutants


def test_the_core_is_every_function_of_its_files_but_those_skipped():
    core = mutants.core_functions()
    sections = {section for section, _ in core.values()}
    assert sections == set(mutants.CORE)  # a file is a section; no comment banner is read
    assert "ae_helpers.x_train" in core and "ae.runs.x_train_run" in core
    assert "ae.explorer.x\u01c1LatentExplorer\u01c1decode_at" in core
    assert "ae_helpers.x_load_mnist" not in core  # skipped in pyproject.toml
    assert not any(name.startswith("ae_helpers.x\u01c1MNIST\u01c1") for name in core)  # skipped by a glob


def test_a_functions_qualified_name_leaves_out_its_module():
    assert mutants.qualified("ae_helpers.x_train") == "x_train"
    assert mutants.qualified("ae.runs.x_train_run") == "x_train_run"
    assert (
        mutants.qualified("ae.explorer.x\u01c1LatentExplorer\u01c1decode_at") == "x\u01c1LatentExplorer\u01c1decode_at"
    )


def test_results_follow_a_function_that_moved_but_not_one_that_changed():
    ledger = {
        "done": {"ae_helpers.x_knn": "aaa", "ae_helpers.x_silhouette": "bbb"},
        "mutants": {
            "ae_helpers.x_knn__mutmut_1": 1,
            "ae_helpers.x_knn__mutmut_2": 0,
            "ae_helpers.x_silhouette__mutmut_1": 1,
        },
    }
    explained = {"ae_helpers.x_knn__mutmut_2": "equivalent"}
    functions = {"ae.metrics.x_knn": ("ae/metrics.py", "aaa"), "ae.metrics.x_silhouette": ("ae/metrics.py", "ccc")}
    ledger, explained = mutants.carry_moved(ledger, explained, functions)
    assert ledger["done"]["ae.metrics.x_knn"] == "aaa"  # same source: its results moved with it
    assert ledger["mutants"]["ae.metrics.x_knn__mutmut_1"] == 1
    assert explained == {"ae.metrics.x_knn__mutmut_2": "equivalent"}
    assert "ae.metrics.x_silhouette" not in ledger["done"]  # its source changed: tested again


def test_every_piece_mutmut_cannot_mutate_has_a_test_that_exists():
    flagged = [line for line in mutants._not_mutated() if "**" in line]
    assert not flagged, flagged
    assert any("OPTIMIZERS" in line for line in mutants._not_mutated())
