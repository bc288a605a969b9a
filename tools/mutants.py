"""Mutation testing of the project's core (`make mutants`): run mutmut, then summarize per section.

    python tools/mutants.py run [--max-children 2]   # mutate the core, test each mutant (resumable)
    python tools/mutants.py run --sections ae/runs.py # only these files (sections), in this order
    python tools/mutants.py run --survivors 'ae_cli.*' # after adding a test: only those functions' survivors
    python tools/mutants.py summary                  # mutation/summary.md from the results so far

The core is set in pyproject.toml ([tool.mutants]): every function of its files, but those it skips
(by qualified name); a file is a section of the summary. Each mutant runs only the fast tests that
reach its function (mutmut's own selection; settings in [tool.mutmut]): not the notebook or browser
tests. Results are kept per function and source: a function that only moves (to another file, or
within one) keeps them; one whose source changes is tested again. mutmut keeps its results in mutants/ (git-ignored),
so an interrupted run resumes. A survivor is either killed by a new test or explained in
mutation/explained.json (why it cannot change behaviour); the summary lists the rest.
"""

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutants"]
CORE = tuple(SETTINGS["files"])  # the core's files; each is a section of the summary
KILLED, SURVIVED, TIMEOUT = {1, 3}, {0}, {36, -24, 24, 152, 255}
OUT = ROOT / "mutation"
EXPLAINED = OUT / "explained.json"  # {mutant: why it cannot change behaviour}
RUNNING = ROOT / "mutants" / "functions-run.json"  # the functions the last `run` tested (mutants/ holds older ones too)
LEDGER = OUT / "results.json"  # committed: results survive a session, per function until its source changes


def module_name(path) -> str:
    """The module mutmut names a file's mutants after: ae/runs.py -> ae.runs."""
    return Path(path).with_suffix("").as_posix().replace("/", ".")


def functions_of(path) -> dict:
    """{mutmut's name of each function or method in ``path``: (``path``, a hash of its source)}."""
    source = (ROOT / path).read_text()
    module, found = module_name(path), {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[f"{module}.x_{node.name}"] = (path, _hash(source, node))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found[f"{module}.x\u01c1{node.name}\u01c1{item.name}"] = (path, _hash(source, item))
    return found


def _hash(source, node) -> str:
    return hashlib.sha256(ast.get_source_segment(source, node).encode()).hexdigest()[:12]


def qualified(function) -> str:
    """A function's name without its module: ae_helpers.x_train -> x_train (what stays when it moves)."""
    return re.split(r"\.(?=x_|x\u01c1)", function, maxsplit=1)[-1]


def core_functions() -> dict:
    """{function: (section, source hash)} of the core: its files' functions but those it skips."""
    skip = SETTINGS.get("skip", [])
    return {
        name: found
        for path in CORE
        for name, found in functions_of(path).items()
        if not any(fnmatch(f"{module_name(path)}.{_plain(name)}", pattern) for pattern in skip)
    }


def _plain(function) -> str:
    """x_train -> train, x\u01c1Run\u01c1start -> Run.start: how pyproject.toml names functions to skip."""
    return qualified(function).removeprefix("x_").removeprefix("x\u01c1").replace("\u01c1", ".")


def carry_moved(ledger, explained, functions) -> tuple:
    """Results of functions that moved (the same qualified name and source in another file) go with them."""
    moved = {}
    for old, digest in ledger["done"].items():
        if old in functions:
            continue
        for new, (_, new_digest) in functions.items():
            if new not in ledger["done"] and qualified(new) == qualified(old) and new_digest == digest:
                moved[old] = new
    for old, new in moved.items():
        ledger["done"][new] = ledger["done"].pop(old)
        prefix, new_prefix = f"{old}__mutmut_", f"{new}__mutmut_"
        for table in (ledger["mutants"], explained):
            for mutant in [m for m in table if m.startswith(prefix)]:
                table[new_prefix + mutant.removeprefix(prefix)] = table.pop(mutant)
    return ledger, explained


def load_ledger() -> dict:
    """The committed results: {"mutants": {name: exit code}, "done": {function: source hash when finished}}."""
    return json.loads(LEDGER.read_text()) if LEDGER.is_file() else {"mutants": {}, "done": {}}


def _function(mutant) -> str:
    """mutmut's name of the function a mutant changes."""
    return mutant.rsplit("__mutmut_", 1)[0]


def update_ledger(ledger, tested=None) -> dict:
    """Add the last run's results (mutants/) to the ledger; forget functions whose source changed since.

    ``tested``: {function: (section, source hash)} when mutmut copied the source; a function edited while
    its mutants ran is recorded with the hash of what was tested, so the next run tests it again."""
    functions = core_functions()
    tested = tested or functions
    ran = set(json.loads(RUNNING.read_text())) if RUNNING.is_file() else set()
    by_function, made = {}, results()
    if made:  # mutmut's files list every mutant of the source it last copied: any other name is gone
        ledger["mutants"] = {m: c for m, c in ledger["mutants"].items() if m in made}
    for mutant, code in made.items():
        by_function.setdefault(_function(mutant), {})[mutant] = code
    for function, codes in by_function.items():
        if function in functions and function in ran and any(code is not None for code in codes.values()):
            if all(code is not None for code in codes.values()):
                ledger["done"][function] = tested.get(function, functions[function])[1]
            ledger["mutants"].update({m: c for m, c in codes.items() if c is not None})
    for function in ran - set(by_function) if made else ():  # mutmut finds nothing to change in it
        if function in functions:
            ledger["done"][function] = tested.get(function, functions[function])[1]
    current = {f for f, (_, digest) in functions.items() if ledger["done"].get(f, digest) == digest}
    ledger["done"] = {f: h for f, h in ledger["done"].items() if f in current}
    ledger["mutants"] = dict(sorted((m, c) for m, c in ledger["mutants"].items() if _function(m) in current))
    return ledger


def run(max_children, only=(), chunk=4) -> int:
    """mutmut on the core functions not finished yet (by the committed ledger), section by section (in the
    order of ``only`` when given), ``chunk`` functions of a section at a time; after each chunk that mutmut
    finishes, its results go into the ledger, so a run cut off by the end of a session loses at most one chunk.
    Returns the first failing exit code."""
    done = load_ledger()["done"]
    todo = {}
    for function, (section, digest) in core_functions().items():
        if (not only or section in only) and done.get(function) != digest:
            todo.setdefault(section, []).append(function)
    order = list(only) or [section for section, _ in core_functions().values()]
    for section, functions in sorted(todo.items(), key=lambda item: order.index(item[0])):
        print(f"--- {section}: {len(functions)} functions", flush=True)
        for start in range(0, len(functions), chunk):
            part = functions[start : start + chunk]
            print(f"--- {section}: {', '.join(part)}", flush=True)
            RUNNING.unlink(missing_ok=True)
            tested = core_functions()  # the source mutmut copies now
            code = _mutmut(max_children, [f"{f}__mutmut_*" for f in part])
            if code:
                code = _without_mutants(max_children, part)
            if code:
                return code  # interrupted or failed: mutants/ may hold older results for these functions
            _write(RUNNING, json.dumps(part))  # only these functions' results in mutants/ are from this run
            _write(LEDGER, json.dumps(update_ledger(load_ledger(), tested), indent=1, ensure_ascii=False) + "\n")
    if not todo:
        print("every core function is tested (mutation/results.json); nothing to run")
    return 0


def _without_mutants(max_children, part) -> int:
    """After mutmut failed on ``part``: when some of its functions have no mutants (mutmut 3 does not mutate
    decorated functions, @property or @contextmanager, and some have nothing to change), which makes mutmut
    refuse a pattern that matches nothing, run the rest again; those count as finished with no mutants."""
    made = {_function(m) for m in results()}  # mutmut wrote every mutant's name before it failed
    empty, rest = [f for f in part if f not in made], [f for f in part if f in made]
    if not empty:
        return 1
    print(f"--- no mutants: {', '.join(empty)}", flush=True)
    return _mutmut(max_children, [f"{f}__mutmut_*" for f in rest]) if rest else 0


def _mutmut(max_children, names) -> int:
    """``mutmut run`` on these mutants (names or globs); its exit code."""
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names]
    # one core per child: torch's own threads on top of the children would oversubscribe the cores
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **threads}).returncode


def retest_survivors(max_children, patterns) -> int:
    """mutmut on the survivors (by the ledger) of the functions matching ``patterns`` only: after a test is
    added to kill them, far cheaper than testing those functions' killed mutants again."""
    survivors = [
        m
        for m, code in load_ledger()["mutants"].items()
        if code == 0 and any(fnmatch(_function(m), p) for p in patterns)
    ]
    if not survivors:
        print(f"no survivors in functions matching {list(patterns)}")
        return 0
    RUNNING.unlink(missing_ok=True)
    code = _mutmut(max_children, survivors)
    if not code:
        _write(RUNNING, json.dumps(sorted({_function(m) for m in survivors})))
    return code


def results() -> dict:
    """{mutant name: exit code (None: not tested yet)} from mutmut's files in mutants/."""
    codes = {}
    for path in CORE:
        meta = ROOT / "mutants" / f"{path}.meta"
        if meta.is_file():
            codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def status(code) -> str:
    if code is None:
        return "not tested"
    if code in KILLED | SURVIVED | TIMEOUT:
        return "killed" if code in KILLED else "survived" if code in SURVIVED else "timed out"
    return "no tests" if code in (5, 33) else f"other ({code})"


def summary(ledger) -> str:
    """Markdown: per section, how many functions are finished and what became of their mutants."""
    functions = core_functions()
    explained = json.loads(EXPLAINED.read_text()) if EXPLAINED.is_file() else {}
    counts = {section: Counter() for section, _ in functions.values()}
    for function, (section, digest) in functions.items():
        counts[section]["functions"] += 1
        counts[section]["finished"] += ledger["done"].get(function) == digest
    survivors = []
    for mutant, code in ledger["mutants"].items():
        section = functions[_function(mutant)][0]
        counts[section][status(code)] += 1
        if status(code) == "survived":
            survivors.append((section, mutant))
    lines = [
        *SUMMARY_HEAD,
        "| section | functions finished | mutants tested | killed | survived | timed out | no tests | killed % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total = Counter()
    for section in sorted(counts):
        total += counts[section]
        lines.append(_row(section, counts[section]))
    tested = {_function(m) for m in ledger["mutants"]}
    empty = sorted(f for f, (_, digest) in functions.items() if ledger["done"].get(f) == digest and f not in tested)
    lines += [_row("**all core**", total), ""]
    if empty:
        lines += [
            f"No mutants ({len(empty)} finished functions): mutmut 3 does not mutate decorated functions "
            "(@property, @contextmanager), and a few have nothing to change: "
            + ", ".join(f"`{f}`" for f in empty)
            + ".",
            "",
        ]
    waiting = sorted(f for f, (_, digest) in functions.items() if ledger["done"].get(f) != digest)
    if waiting:
        lines += [
            f"Not finished ({len(waiting)} functions, new or changed since they were tested; `make mutants` "
            "tests them): " + ", ".join(f"`{f}`" for f in waiting) + ".",
            "",
        ]
    lines += ["## Survivors", ""]
    lines += [f"- `{m}` ({section}): {explained.get(m, 'not explained yet')}" for section, m in survivors]
    lines += ["", *_not_mutated()]
    return "\n".join(lines) + "\n"


SUMMARY_HEAD = [
    "# Mutation testing of the core",
    "",
    "Generated by `make mutants` (`tools/mutants.py`): mutmut changes one thing at a time in a function (an "
    "operator, a constant, an argument, a string) and runs the fast tests that reach it. Killed: a test failed. "
    "Survived: every test passed. Timed out: the tests ran far longer than unmutated (counted as killed: a hang "
    "is caught). No tests: no fast test reaches the function. Killed % = (killed + timed out) / (killed + "
    "survived + timed out). A function is finished when all its mutants are tested; results are kept in "
    "mutation/results.json until the function's source changes.",
    "",
]


def _not_mutated() -> list:
    """What mutmut does not mutate in the core, each with the test that checks it takes effect (a blind
    spot, not a pass): module-level tables and constants, lambdas, code run at import, decorated functions.
    The list and its tests are in pyproject.toml ([tool.mutants.blind_spots]); a piece found here but
    not listed there, or listed with a test that does not exist, is flagged."""
    listed = SETTINGS.get("blind_spots", {})
    tests = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    lines = ["## Not mutated: each with the test that checks it", ""]
    for piece in blind_spots():
        test = listed.get(piece)
        if test is None:
            lines.append(f"- `{piece}`: **no test listed** in pyproject.toml")
        elif f"def {test}(" not in tests:
            lines.append(f"- `{piece}`: **listed test `{test}` not found**")
        else:
            lines.append(f"- `{piece}`: `{test}`")
    return lines


def blind_spots() -> list:
    """The core's module-level assignments (tables, constants, code run at import), module-level lambdas
    and decorated functions, as "file: name" (a lambda inside a function is mutated with it)."""
    found = []
    for path in CORE:
        tree = ast.parse((ROOT / path).read_text())
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
                found += [f"{path}: {name}" for name in names]
            elif isinstance(node, ast.ClassDef) and any(
                isinstance(i, ast.AnnAssign) and i.value is not None for i in node.body
            ):
                found.append(f"{path}: {node.name} field defaults")
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if function.decorator_list:
                found.append(f"{path}: @{ast.unparse(function.decorator_list[0])} {function.name}")
        lambdas = sum(isinstance(n, ast.Lambda) for n in ast.walk(tree)) - sum(
            isinstance(n, ast.Lambda) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
        )
        if lambdas > 0:
            found.append(f"{path}: lambda at module level")
    return sorted(set(found), key=found.index)


def _row(section, counter) -> str:
    tested = counter["killed"] + counter["survived"] + counter["timed out"]
    killed = f"{100 * (counter['killed'] + counter['timed out']) / tested:.1f}" if tested else "-"
    cells = [
        section,
        f"{counter['finished']} of {counter['functions']}",
        tested + counter["no tests"],
        counter["killed"],
        counter["survived"],
        counter["timed out"],
        counter["no tests"],
        killed,
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def _write(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "summary"))
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (one per core)")
    parser.add_argument(
        "--sections", nargs="+", default=(), metavar="SECTION", help="run only these sections, in this order"
    )
    parser.add_argument(
        "--chunk", type=int, default=4, help="functions per mutmut call; each finished call is kept in the ledger"
    )
    parser.add_argument(
        "--again",
        nargs="+",
        default=(),
        metavar="PATTERN",
        help="test these functions again (glob over names such as ae_helpers.x_train), e.g. after "
        "adding a test that should kill a survivor",
    )
    parser.add_argument(
        "--survivors",
        nargs="+",
        default=(),
        metavar="PATTERN",
        help="test only the survivors of these functions again (glob, as --again), e.g. after adding a test",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections) - set(CORE))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; the core's files are {list(CORE)}")
    OUT.mkdir(exist_ok=True)
    explained = json.loads(EXPLAINED.read_text()) if EXPLAINED.is_file() else {}
    ledger, explained = carry_moved(load_ledger(), explained, core_functions())
    _write(LEDGER, json.dumps(ledger, indent=1, ensure_ascii=False) + "\n")
    _write(EXPLAINED, json.dumps(dict(sorted(explained.items())), indent=1, ensure_ascii=False) + "\n")
    if args.again:
        ledger = load_ledger()
        ledger["done"] = {f: h for f, h in ledger["done"].items() if not any(fnmatch(f, p) for p in args.again)}
        _write(LEDGER, json.dumps(ledger, indent=1, ensure_ascii=False) + "\n")
    if args.survivors:
        code = retest_survivors(args.max_children, args.survivors)
    else:
        code = run(args.max_children, args.sections, args.chunk) if args.command == "run" else 0
    ledger = update_ledger(load_ledger())
    _write(LEDGER, json.dumps(ledger, indent=1, ensure_ascii=False) + "\n")
    text = summary(ledger)
    _write(OUT / "summary.md", text)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
