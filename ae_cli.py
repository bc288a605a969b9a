"""The command line and the experiment runner: what the notebook never calls.

    python ae_cli.py fetch                  # download and verify MNIST into data/
    python ae_cli.py train --out runs/x     # one run; every RunConfig field is an option (--help)
    python ae_cli.py experiments [--jobs 2] # every saved run of default_layers/ and mynet/ (resumable)

Imports ``ae_helpers``; ``ae_helpers`` never imports this module.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import ae.metrics as ae_metrics
import ae_helpers as ah
from ae import analyses, figures, runs
from mnist_files import DataError, fetch_mnist

DATA = "data"  # where MNIST is kept, relative to the folder the command runs in


class ExperimentError(RuntimeError):
    """A run of EXPERIMENTS failed in a worker process."""


# ----------------------------------------------------------------------------
# The experiment runner
# ----------------------------------------------------------------------------


def check_experiments(only, jobs) -> list:
    """The runs to train (all of EXPERIMENTS when ``only`` is empty); ValueError naming a bad choice."""
    names = list(only) if only else list(runs.EXPERIMENTS)
    unknown = [n for n in names if n not in runs.EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; choose from: {', '.join(runs.EXPERIMENTS)}.")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}.")
    return names


def run_experiments(
    only=None, root=runs.PROJECT_ROOT, data_root=None, redraw=False, force=False, device="auto", progress=True, jobs=1
):
    """Train every run in EXPERIMENTS that is not finished yet (resuming interrupted ones), then summarize.

    ``root`` holds the run folders (default_layers/, mynet/); ``data_root`` MNIST (default root/data).
    ``jobs`` > 1 trains that many runs at once, each in its own process with an equal share of the CPU
    threads (on 2 cores, two 1-thread runs finish about 1.4x sooner than one 2-thread run after another).
    """
    names, root = check_experiments(only, jobs), Path(root)
    data_root = Path(data_root) if data_root is not None else root / DATA
    data = ah.load_mnist(data_root)
    if jobs > 1 and not redraw:
        todo = [n for n in names if force or not runs.run_is_complete(root / n, runs.EXPERIMENTS[n])]
        for name in sorted(set(names) - set(todo), key=names.index):
            print(f"{name}: finished, skipped")
        _train_in_parallel(todo, root, data_root, jobs, force, device, progress)
    else:
        for i, name in enumerate(names, 1):
            _train_or_skip(name, f"[{i}/{len(names)}]", root, data, redraw, force, device, progress)
    write_summaries(root, data)


def _train_or_skip(name, counter, root, data, redraw, force, device, progress):
    """Train one run of EXPERIMENTS and draw its figures; a finished one is skipped (or redrawn)."""
    config, run_dir = runs.EXPERIMENTS[name], root / name
    if runs.run_is_complete(run_dir, config) and not force:
        if redraw:
            _redraw(run_dir, data)
        print(f"{counter} {name}: finished, skipped")
        return
    print(f"{counter} {name}: training {config.epochs} epochs", flush=True)
    run = runs.train_run(config, data, run_dir=run_dir, device=device, progress=progress, resume=not force)
    figures.draw_run_figures(run, data)
    write_summaries(root, data)


def _redraw(run_dir, data):
    """Measure a finished run again (when its weights are here) and redraw its figures."""
    run = runs.load_run(run_dir)
    if run.model is not None:
        run.metrics.update(ae_metrics.measure_run(run.model, data, *ah.run_split(run.config, len(data.train_images))))
        runs.write_json(run_dir / "metrics.json", run.metrics)
    figures.draw_run_figures(run, data)


def _train_in_parallel(names, root, data_root, jobs, force, device, progress, launch=None):
    """Train ``names`` in ``jobs`` worker processes, longest runs first; each worker's output goes to
    ``train.log`` in its run folder. Raises ExperimentError naming the runs whose worker failed."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    launch = launch or _launch_worker
    # the longest runs first, so that no long run is left alone at the end
    names = sorted(names, key=lambda n: -runs.EXPERIMENTS[n].epochs * sum(runs.EXPERIMENTS[n].layer_sizes))
    failed = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(launch, name, root, data_root, threads, force, device): name for name in names}
        for future in ah.progress_bar(
            concurrent.futures.as_completed(futures),
            progress and bool(names),
            desc=f"runs ({jobs} at a time)",
            unit="run",
        ):
            name, code = futures[future], future.result()
            if code:
                failed.append(name)
            print(f"{name}: {'failed' if code else 'finished'}", flush=True)
    if failed:
        raise ExperimentError(
            f"training failed for {failed}; see train.log in each run folder, then rerun "
            "(finished runs are skipped, interrupted ones resume)."
        )


def _launch_worker(name, root, data_root, threads, force, device) -> int:
    """Train one run in a child process limited to ``threads`` CPU threads; returns its exit code."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "experiments",
        "--only",
        name,
        "--results",
        str(root),
        "--data",
        str(data_root),
        "--device",
        device,
    ] + (["--force"] if force else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = Path(root) / name / "train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


SUMMARY_COLUMNS = (
    "run",
    "epochs",
    "best_epoch",
    "train_mse",
    "val_mse",
    "test_mse",
    "train_mse_pixels",
    "test_mse_pixels",
    "knn5_val_accuracy",
    "knn5_accuracy",
    "silhouette",
    "seconds",
    "device",
)
SUMMARY_HEADER = (
    "MSE in normalized units (pixel units = normalized x 0.3081^2); train/val/test MSE of the "
    "best-validation weights, evaluated on the full sets; 5-NN accuracy of the 2-D validation and "
    "test codes (fitted on training codes; recipes are chosen by the validation one); silhouette of "
    "the test codes by digit. Regenerate with `make results`."
)


def write_summaries(root=runs.PROJECT_ROOT, data: ah.MNIST | None = None) -> None:
    """Write summary.md and summary.csv in default_layers/ and mynet/ from the finished runs (+ PCA-2)."""
    root, pca = Path(root), None
    for group in ("default_layers", "mynet"):
        rows = _summary_rows(root, group)
        if not rows:
            continue
        if data is not None:
            pca = pca or ae_metrics.pca_baseline(data)
            rows.append({"run": "PCA-2 baseline", "epochs": "", "best_epoch": "", "seconds": "", "device": "", **pca})
        with io.StringIO() as buffer:
            writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            runs.write_text(root / group / "summary.csv", buffer.getvalue())
        table = analyses.markdown_table(SUMMARY_COLUMNS, [[row.get(c, "") for c in SUMMARY_COLUMNS] for row in rows])
        runs.write_text(root / group / "summary.md", f"# {group}: results\n\n{SUMMARY_HEADER}\n\n{table}\n")


def _summary_rows(root, group) -> list:
    rows = []
    for name in runs.EXPERIMENTS:
        if name.startswith(group + "/") and runs.run_is_complete(root / name):
            metrics = json.loads((root / name / "metrics.json").read_text())
            rows.append({"run": name.split("/", 1)[1], "epochs": metrics["epochs_run"], **metrics})
    return rows


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def _layer_list(text):
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer sizes must be integers such as 1000,500,250,2, got {text!r}") from None


def add_config_options(parser) -> None:
    """One option per RunConfig field: its name with dashes, its type, default, help and choices."""
    for f in dataclasses.fields(ah.RunConfig):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        options = {"help": f.metadata["help"], "choices": f.metadata["choices"]}
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=options["help"])
        elif isinstance(default, tuple):  # 1000,500,250,2 or 1000 500 250 2
            parser.add_argument(
                flag, type=_layer_list, nargs="+", default=[list(default)], metavar="SIZES", help=options["help"]
            )
        else:
            parser.add_argument(flag, type=type(default), default=default, **options)


def config_from_args(args) -> ah.RunConfig:
    """The RunConfig the options describe; ValueError naming a bad value."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ah.RunConfig)}
    values["layer_sizes"] = tuple(size for group in values["layer_sizes"] for size in group)
    return ah.RunConfig(**values)


# What the help says, in one place (wording: no test judges it, so mutation testing leaves it alone).
HELP = {
    "ae_cli.py": "MNIST autoencoder tools.",
    "fetch": "download and verify MNIST into DATA/MNIST/raw",
    "train": "train one run into a run folder",
    "experiments": "train all runs of default_layers/ and mynet/ (resumable)",
    "--data": "the MNIST folder (holds MNIST/raw/)",
    "--device": "auto (CUDA, then Apple's MPS, then the CPU), cpu, cuda or mps",
    "--out": "run folder to write",
    "--list": "list the runs and whether they are finished",
    "--only": "just these runs (names from --list)",
    "--redraw": "recompute metrics and figures of finished runs",
    "--force": "retrain even finished runs",
    "--jobs": "train this many runs at once (threads are shared)",
    "--results": "the folder holding default_layers/ and mynet/",
    "experiments --data": "the MNIST folder (holds MNIST/raw/); when unset, RESULTS/data",
}


def _parser():
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="ae_cli.py", description=HELP["ae_cli.py"], formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help=HELP["fetch"], formatter_class=formatter)
    fetch.add_argument("--data", default=DATA, help=HELP["--data"])
    tr = sub.add_parser("train", help=HELP["train"], formatter_class=formatter)
    tr.add_argument("--out", required=True, help=HELP["--out"])
    add_config_options(tr)
    tr.add_argument("--device", default="auto", help=HELP["--device"])
    tr.add_argument("--data", default=DATA, help=HELP["--data"])
    ex = sub.add_parser("experiments", help=HELP["experiments"], formatter_class=formatter)
    ex.add_argument("--list", action="store_true", help=HELP["--list"])
    ex.add_argument("--only", nargs="+", metavar="RUN", help=HELP["--only"])
    ex.add_argument("--redraw", action="store_true", help=HELP["--redraw"])
    ex.add_argument("--force", action="store_true", help=HELP["--force"])
    ex.add_argument("--jobs", type=int, default=1, help=HELP["--jobs"])
    ex.add_argument("--results", default=str(runs.PROJECT_ROOT), help=HELP["--results"])
    ex.add_argument("--data", default=None, help=HELP["experiments --data"])
    ex.add_argument("--device", default="auto", help=HELP["--device"])
    for command in (fetch, tr, ex):
        command.set_defaults(parser=command)  # a bad value is reported with its command's usage
    return parser


@contextlib.contextmanager
def _usage_on_bad_input(parser):
    """A ValueError while the arguments are checked is the user's input: usage and exit 2."""
    try:
        yield
    except ValueError as exc:
        parser.error(str(exc))


def _fetch(args, parser):
    fetch_mnist(args.data)


def _train(args, parser):
    with _usage_on_bad_input(parser):
        config = config_from_args(args)
        ah.resolve_device(args.device)
    data = ah.load_mnist(args.data, normalize=config.normalize)
    with _usage_on_bad_input(parser):
        ah.check_data(config, data)
    run = runs.train_run(config, data, run_dir=args.out, device=args.device)
    figures.draw_run_figures(run, data)
    print(json.dumps(run.metrics, indent=2))


def _experiments(args, parser):
    with _usage_on_bad_input(parser):
        check_experiments(args.only, args.jobs)
        ah.resolve_device(args.device)
    if args.list:
        for name, config in runs.EXPERIMENTS.items():
            state = "finished" if runs.run_is_complete(Path(args.results) / name, config) else "to do"
            print(f"{name:45s} {config.epochs:4d} epochs  {state}")
        return
    run_experiments(
        args.only,
        root=args.results,
        data_root=args.data,
        redraw=args.redraw,
        force=args.force,
        device=args.device,
        jobs=args.jobs,
    )


COMMANDS = {"fetch": _fetch, "train": _train, "experiments": _experiments}


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them with the top-level usage, not the command's
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        COMMANDS[args.command](args, args.parser)
    except (DataError, ExperimentError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
