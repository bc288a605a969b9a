"""Mutation testing of the project's core (`make mutants`): run mutmut, then summarize per section.

    python tools/mutants.py run [--max-children 2]   # mutate the core, test each mutant (resumable)
    python tools/mutants.py run --sections Training  # only these sections, in this order
    python tools/mutants.py run --survivors 'ae_cli.*' # after adding a test: only those functions' survivors
    python tools/mutants.py summary                  # mutation/summary.md from the results so far

The core is every function of these sections of ae_helpers.py (model, configuration, training, run
folders, evaluation, latent explorer) and all of ae_cli.py (experiment runner, command line). Each
mutant runs only the fast tests that reach its function (mutmut's own selection; settings in
pyproject.toml): not the notebook or browser tests. mutmut keeps its results in mutants/ (git-ignored),
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
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = {
    "ae_helpers.py": ("Model", "Configuration", "Training", "Run folders", "Evaluation", "Latent explorer"),
    "ae_cli.py": ("The experiment runner", "Command line"),
}
BANNER = re.compile(r"^# -{20,}\n# (.+)\n# -{20,}$", re.M)
KILLED, SURVIVED, TIMEOUT = {1, 3}, {0}, {36, -24, 24, 152, 255}
OUT = ROOT / "mutation"
EXPLAINED = OUT / "explained.json"  # {mutant: why it cannot change behaviour}
RUNNING = ROOT / "mutants" / "functions-run.json"  # the functions the last `run` tested (mutants/ holds older ones too)
LEDGER = OUT / "results.json"  # committed: results survive a session, per function until its source changes


def sections(path) -> dict:
    """{mutmut's name of each function or method in ``path``: (its section, a hash of its source)}."""
    source = (ROOT / path).read_text()
    starts = [(source[: m.start()].count("\n") + 1, m.group(1).split(":")[0]) for m in BANNER.finditer(source)]
    module = Path(path).stem
    found = {}
    for node in ast.parse(source).body:
        section = next((name for line, name in reversed(starts) if line <= node.lineno), None)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[f"{module}.x_{node.name}"] = (section, _hash(source, node))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found[f"{module}.x\u01c1{node.name}\u01c1{item.name}"] = (section, _hash(source, item))
    return found


def _hash(source, node) -> str:
    return hashlib.sha256(ast.get_source_segment(source, node).encode()).hexdigest()[:12]


def core_functions() -> dict:
    """{function: (section, source hash)} of the core."""
    return {name: found for path, core in CORE.items() for name, found in sections(path).items() if found[0] in core}


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
    lines += [_row("**all core**", total), "", *_not_mutated(), ""]
    if empty:
        lines += [
            f"No mutants ({len(empty)} finished functions): mutmut 3 does not mutate decorated functions "
            "(@property, @contextmanager), and a few have nothing to change: "
            + ", ".join(f"`{f}`" for f in empty)
            + ".",
            "",
        ]
    lines += ["## Survivors", ""]
    lines += [f"- `{m}` ({section}): {explained.get(m, 'not explained yet')}" for section, m in survivors]
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
    """The lines marked `# pragma: no mutate (reason)`: presentation that no fast test can judge."""
    marked = [
        (path, number, line.split("no mutate", 1)[1].strip(" ()"))
        for path in CORE
        for number, line in enumerate((ROOT / path).read_text().splitlines(), 1)
        if "# pragma: no mutate" in line
    ]
    reasons = Counter(reason.split(":")[0] for _, _, reason in marked)
    return [
        f"Not mutated: {len(marked)} lines marked `# pragma: no mutate` ("
        + ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
        + "), what no fast test can judge: how the explorer looks and reads (the browser test and its screenshot "
        "show it) and its drag interval (a tuning constant). Lines: "
        + "; ".join(f"{path}:{number}" for path, number, _ in marked)
        + "."
    ]


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
    unknown = sorted(set(args.sections) - {section for sections in CORE.values() for section in sections})
    if unknown:
        parser.error(f"unknown section(s) {unknown}; the core sections are {[s for v in CORE.values() for s in v]}")
    OUT.mkdir(exist_ok=True)
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
