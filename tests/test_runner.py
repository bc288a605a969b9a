"""The experiment runner's parts (ae_cli.py), each without training: which runs it picks, how it shares the
CPU, what it launches and what it summarizes. tests/test_cli.py runs them for real through the command line."""

import csv
import io
import json
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

import ae.metrics as ae_metrics
import ae_cli
import ae_helpers as ah
from ae import figures, runs
from support import ROOT, copy_finished_run


@pytest.fixture(autouse=True)
def _no_real_workers(monkeypatch):
    """A part that wrongly starts a real worker, or trains in this process, fails at once here, instead of
    training real runs for hours (a test that means to train replaces runs.train_run with its own)."""
    monkeypatch.setattr(ae_cli.subprocess, "run", lambda command, **options: pytest.fail(f"started {command}"))
    monkeypatch.setattr(runs, "train_run", lambda config, data, **options: pytest.fail(f"trained {config}"))


FINISHED = ("default_layers/adam_lr5e-4", "mynet/adam_lr5e-4")  # committed runs


def _copy_finished(root, names=FINISHED):
    for name in names:
        copy_finished_run(name, root)


@pytest.mark.parametrize("only", [None, []])
def test_no_choice_means_every_run(only):
    assert ae_cli.check_experiments(only, 1) == list(runs.EXPERIMENTS)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2"])
def test_jobs_must_be_a_whole_number_from_1(jobs):
    with pytest.raises(ValueError, match=f"jobs must be an integer >= 1, got {jobs!r}"):
        ae_cli.check_experiments(None, jobs)


def test_unknown_runs_are_named_with_the_choices():
    choices = ", ".join(runs.EXPERIMENTS)
    with pytest.raises(ValueError, match=re.escape(f"unknown run(s) ['mynet/nope']; choose from: {choices}.")):
        ae_cli.check_experiments(["mynet/adam_lr5e-4", "mynet/nope"], 1)


def _recorder(codes=None):
    calls = []

    def launch(name, root, data_root, threads, force, device):
        calls.append((name, root, data_root, threads, force, device))
        return (codes or {}).get(name, 0)

    return calls, launch


def test_parallel_runs_start_longest_first_with_an_equal_share_of_threads(monkeypatch, capsys):
    monkeypatch.setattr(ae_cli.os, "cpu_count", lambda: 8)
    names = [
        "default_layers/adam_lr1e-3",
        "mynet/adam_lr5e-4",
        "mynet/adam_lr5e-4_cosine60",
        "default_layers/adam_lr5e-4",
    ]
    calls, launch = _recorder()
    ae_cli._train_in_parallel(names, "R", "D", 1, True, "cpu", progress=False, launch=launch)  # one at a time
    work = {n: runs.EXPERIMENTS[n].epochs * sum(runs.EXPERIMENTS[n].layer_sizes) for n in names}
    assert [call[0] for call in calls] == sorted(names, key=work.get, reverse=True)
    assert {call[1:] for call in calls} == {("R", "D", 8, True, "cpu")}  # 8 threads / 1 job
    assert capsys.readouterr().out.splitlines() == [f"{call[0]}: finished" for call in calls]
    monkeypatch.setattr(ae_cli.os, "cpu_count", lambda: None)  # unknown: one thread each
    calls, launch = _recorder()
    ae_cli._train_in_parallel(names, "R", "D", 1, False, "cpu", progress=False, launch=launch)
    assert {call[3] for call in calls} == {1}
    monkeypatch.setattr(ae_cli.os, "cpu_count", lambda: 8)
    for jobs, threads in ((3, 2), (16, 1)):  # 8 // 3 = 2; at least one each
        calls, launch = _recorder()
        ae_cli._train_in_parallel(names, "R", "D", jobs, False, "cpu", progress=False, launch=launch)
        assert {call[3] for call in calls} == {threads}


def test_parallel_training_runs_jobs_at_once_longest_first_and_names_failures(tmp_path, monkeypatch, capsys):
    names = [
        "mynet/adam_lr5e-4_cosine60",
        "default_layers/adam_lr5e-4",
        "mynet/adam_lr5e-4",
        "default_layers/sgd_lr5e-4",
    ]
    running, peak, started, lock = [0], [0], [], threading.Lock()

    def launch(name, root, data_root, threads, force, device):
        with lock:
            started.append((name, threads))
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return 1 if name == "mynet/adam_lr5e-4" else 0

    monkeypatch.setattr(ae_cli.os, "cpu_count", lambda: 4)
    with pytest.raises(
        ae_cli.ExperimentError,
        match=r"training failed for \['mynet/adam_lr5e-4'\]; see train.log in each run folder, then rerun "
        r"\(finished runs are skipped, interrupted ones resume\)\.$",
    ):
        ae_cli._train_in_parallel(names, tmp_path, tmp_path / "data", 2, False, "cpu", False, launch=launch)
    assert peak[0] == 2
    assert len(started) == 4
    assert all(threads == 2 for _, threads in started)  # 4 cores shared by 2 jobs
    assert started[0][0] == "default_layers/adam_lr5e-4"  # the longest run starts first
    assert "mynet/adam_lr5e-4: failed" in capsys.readouterr().out


def test_a_worker_is_this_command_line_with_its_thread_share_and_a_log(tmp_path, monkeypatch):
    seen = {}

    def run(command, env, stdout, stderr):
        seen.update(command=command, env=env, log=stdout.name, stderr=stderr)
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(ae_cli.subprocess, "run", run)
    name = "mynet/adam_lr5e-4"
    assert ae_cli._launch_worker(name, tmp_path, "D", 3, True, "cpu") == 3  # the worker's exit code
    assert seen["command"][1:] == [
        *(str(ROOT / "ae_cli.py"), "experiments", "--only", name, "--results", str(tmp_path)),
        *("--data", "D", "--device", "cpu", "--force"),
    ]
    assert (seen["env"]["OMP_NUM_THREADS"], seen["env"]["MKL_NUM_THREADS"]) == ("3", "3")
    assert seen["log"] == str(tmp_path / name / "train.log") and seen["stderr"] == subprocess.STDOUT
    ae_cli._launch_worker(name, tmp_path, "D", 1, False, "cpu")
    assert "--force" not in seen["command"]


def test_the_parallel_runner_trains_only_unfinished_runs_unless_forced(tmp_path, monkeypatch, capsys):
    _copy_finished(tmp_path)
    (tmp_path / "data").symlink_to(ROOT / "data")  # the data's default place: RESULTS/data
    launched = []
    monkeypatch.setattr(
        ae_cli,
        "_train_in_parallel",
        lambda names, root, data_root, *rest: launched.append((names, root, data_root, rest)),
    )
    monkeypatch.setattr(ae_cli, "write_summaries", lambda root, data: None)
    names = [*FINISHED, "default_layers/adam_lr1e-3"]
    ae_cli.run_experiments(names, root=tmp_path, jobs=2, device="cpu", progress=False)
    assert launched[-1] == (["default_layers/adam_lr1e-3"], tmp_path, tmp_path / "data", (2, False, "cpu", False))
    assert capsys.readouterr().out.splitlines() == [f"{name}: finished, skipped" for name in FINISHED]
    ae_cli.run_experiments(names, root=tmp_path, jobs=2, force=True, progress=False)
    assert launched[-1][0] == names


def test_redraw_with_several_jobs_redraws_in_this_process(tmp_path, monkeypatch):
    _copy_finished(tmp_path, FINISHED[:1])
    redrawn = []
    monkeypatch.setattr(ae_cli, "_train_in_parallel", lambda *args: pytest.fail("a redraw trains nothing"))
    monkeypatch.setattr(ae_cli, "_redraw", lambda run_dir, data: redrawn.append(run_dir))
    monkeypatch.setattr(ae_cli, "write_summaries", lambda root, data: None)
    ae_cli.run_experiments(FINISHED[:1], root=tmp_path, data_root=ROOT / "data", jobs=2, redraw=True)
    assert redrawn == [tmp_path / FINISHED[0]]


def test_summaries_list_each_finished_run_with_its_metrics_and_the_pca_baseline(tmp_path, mnist, monkeypatch):
    _copy_finished(tmp_path, FINISHED[:1])
    pca = {"test_mse": 0.5, "knn5_accuracy": 0.4}
    monkeypatch.setattr(ae_metrics, "pca_baseline", lambda data: pca)
    ae_cli.write_summaries(tmp_path)  # without data: no baseline row
    rows = list(csv.DictReader(io.StringIO((tmp_path / "default_layers/summary.csv").read_text())))
    metrics = json.loads((ROOT / FINISHED[0] / "metrics.json").read_text())
    assert [row["run"] for row in rows] == ["adam_lr5e-4"]
    assert rows[0].keys() == set(ae_cli.SUMMARY_COLUMNS)
    assert rows[0]["epochs"] == str(metrics["epochs_run"])
    assert all(rows[0][c] == str(metrics[c]) for c in ae_cli.SUMMARY_COLUMNS if c not in ("run", "epochs"))
    assert not (tmp_path / "mynet").exists()  # no finished run there: no summary
    ae_cli.write_summaries(tmp_path, mnist)
    assert b"\r" not in (tmp_path / "default_layers/summary.csv").read_bytes()  # Unix line ends, as git keeps it
    rows = list(csv.DictReader(io.StringIO((tmp_path / "default_layers/summary.csv").read_text())))
    assert [row["run"] for row in rows] == ["adam_lr5e-4", "PCA-2 baseline"]
    assert (rows[1]["test_mse"], rows[1]["knn5_accuracy"], rows[1]["epochs"]) == ("0.5", "0.4", "")
    table = (tmp_path / "default_layers/summary.md").read_text()
    assert table.startswith(f"# default_layers: results\n\n{ae_cli.SUMMARY_HEADER}\n\n| run | epochs |")
    assert f"| adam_lr5e-4 | {metrics['epochs_run']} | {metrics['best_epoch']} |" in table
    assert table.endswith(
        "| PCA-2 baseline |  |  | " + " | ".join(str(pca.get(c, "")) for c in ae_cli.SUMMARY_COLUMNS[3:]) + " |\n"
    )


def test_a_finished_run_of_another_config_is_trained_again(tmp_path, capsys, monkeypatch):
    # mynet/adam_lr5e-4's files under the name of its seed-1 variant: finished, but not of that run's config.
    name = "mynet/adam_lr5e-4_seed1"
    copy_finished_run("mynet/adam_lr5e-4", tmp_path, as_name=name)
    trained = []

    def train(config, data, run_dir, **options):
        trained.append(run_dir)
        raise InterruptedError("stop before training")

    monkeypatch.setattr(runs, "train_run", train)
    with pytest.raises(InterruptedError):
        ae_cli._train_or_skip(name, "[1/1]", tmp_path, None, False, False, "cpu", False)
    assert trained == [tmp_path / name]
    assert "[1/1] mynet/adam_lr5e-4_seed1: training 150 epochs" in capsys.readouterr().out


@pytest.mark.parametrize("force, progress", [(False, True), (True, False)])
def test_a_run_is_trained_as_asked_then_drawn_and_summarized(tmp_path, monkeypatch, force, progress):
    name, data, run, seen = "mynet/adam_lr5e-4", object(), object(), []
    monkeypatch.setattr(runs, "train_run", lambda config, data, **options: seen.append((config, data, options)) or run)
    monkeypatch.setattr(figures, "draw_run_figures", lambda *args: seen.append(args))
    monkeypatch.setattr(ae_cli, "write_summaries", lambda *args: seen.append(args))
    ae_cli._train_or_skip(name, "[1/1]", tmp_path, data, False, force, "cpu", progress)
    options = dict(run_dir=tmp_path / name, device="cpu", progress=progress, resume=not force)
    assert seen == [(runs.EXPERIMENTS[name], data, options), (run, data), (tmp_path, data)]


def test_a_redraw_measures_on_the_split_of_the_data_given(tmp_path, monkeypatch):
    # 10,000 training images, not MNIST's 60,000: the split must come from the data given.
    folder = copy_finished_run(FINISHED[0], tmp_path)
    shutil.copy(ROOT / FINISHED[0] / "model.pt", folder / "model.pt")  # a redraw measures only with weights
    data, seen = type("Data", (), {"train_images": range(10000)})(), []
    monkeypatch.setattr(ae_metrics, "measure_run", lambda model, data, *split: seen.append(split) or {"test_mse": 9.0})
    monkeypatch.setattr(figures, "draw_run_figures", lambda run, data: seen.append(run.metrics["test_mse"]))
    ae_cli._redraw(folder, data)
    config = runs.load_run(folder).config
    (train_idx, val_idx), want = seen[0], ah.run_split(config, 10000)
    assert train_idx.tolist() == want[0].tolist() and val_idx.tolist() == want[1].tolist()
    assert seen[1] == 9.0 and json.loads((folder / "metrics.json").read_text())["test_mse"] == 9.0


@pytest.mark.parametrize("progress, jobs", [(True, 2), (False, 1)])
def test_the_parallel_progress_bar_counts_runs_when_asked(monkeypatch, progress, jobs):
    bars = []
    monkeypatch.setattr(
        ah, "progress_bar", lambda iterable, show, desc, unit: bars.append((show, desc, unit)) or iterable
    )
    _, launch = _recorder()
    ae_cli._train_in_parallel(list(FINISHED), "R", "D", jobs, False, "cpu", progress, launch=launch)
    ae_cli._train_in_parallel([], "R", "D", jobs, False, "cpu", progress, launch=launch)
    assert bars == [(progress, f"runs ({jobs} at a time)", "run"), (False, f"runs ({jobs} at a time)", "run")]


def test_a_progress_bar_shows_its_description_and_counts_its_unit(capsys):
    assert list(ah.progress_bar(range(3), True, "experiments", unit="run")) == [0, 1, 2]
    shown = capsys.readouterr().err
    assert "experiments" in shown and "3/3" in shown and "run/s" in shown and "epoch" not in shown
    numbers = range(3)
    assert ah.progress_bar(numbers, False, "experiments") is numbers and capsys.readouterr().err == ""


def test_runs_one_at_a_time_get_the_loaded_data_and_every_option_then_a_summary(tmp_path, monkeypatch):
    data, calls = object(), []
    monkeypatch.setattr(ah, "load_mnist", lambda root: data if root == tmp_path / "data" else pytest.fail(str(root)))
    monkeypatch.setattr(ae_cli, "_train_or_skip", lambda *args: calls.append(args))
    monkeypatch.setattr(ae_cli, "write_summaries", lambda *args: calls.append(args))
    ae_cli.run_experiments(list(FINISHED), root=tmp_path, force=True)  # progress defaults to True
    assert calls == [
        (FINISHED[0], "[1/2]", tmp_path, data, False, True, "auto", True),
        (FINISHED[1], "[2/2]", tmp_path, data, False, True, "auto", True),
        (tmp_path, data),
    ]


def test_the_parallel_runner_skips_finished_runs_of_their_own_config_in_the_order_asked(tmp_path, monkeypatch, capsys):
    _copy_finished(tmp_path)
    copy_finished_run("mynet/adam_lr5e-4", tmp_path, as_name="mynet/adam_lr5e-4_seed1")  # another config's files
    launched = []
    monkeypatch.setattr(ah, "load_mnist", lambda root: None)
    monkeypatch.setattr(ae_cli, "_train_in_parallel", lambda names, *rest: launched.append(names))
    monkeypatch.setattr(ae_cli, "write_summaries", lambda root, data: None)
    names = ["mynet/adam_lr5e-4_seed1", *reversed(FINISHED)]
    ae_cli.run_experiments(names, root=tmp_path, jobs=2, progress=False)
    assert launched == [["mynet/adam_lr5e-4_seed1"]]
    assert capsys.readouterr().out.splitlines() == [f"{name}: finished, skipped" for name in reversed(FINISHED)]


def test_a_finished_bar_stays_in_a_notebook_too(monkeypatch):
    import tqdm.auto
    import tqdm.notebook

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm)  # what tqdm.auto picks in Jupyter
    bar = ah.progress_bar(range(3), True, "experiments", unit="run")
    assert list(bar) == [0, 1, 2]
    assert bar.container.layout.visibility != "hidden"  # a notebook bar whose leave is not True is hidden at its end


def test_a_runs_first_line_leaves_the_buffer_before_it_trains(tmp_path, monkeypatch):
    # a worker's stdout and stderr both go to train.log: unflushed, the line would land after the training's output
    flushed, seen = [], []
    monkeypatch.setattr(sys.stdout, "flush", lambda: flushed.append(True))

    def train(*args, **kwargs):
        seen.append(bool(flushed))
        raise KeyboardInterrupt  # enough: training has started

    monkeypatch.setattr(runs, "train_run", train)
    with pytest.raises(KeyboardInterrupt):
        ae_cli._train_or_skip("mynet/adam_lr5e-4", "[1/1]", tmp_path, None, False, False, "cpu", False)
    assert seen == [True]
