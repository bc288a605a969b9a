"""The command line (ae_cli.py): built from RunConfig, bad values exit 2 with usage, never a traceback."""

import dataclasses
import json
import shutil

import pytest

import ae_cli
import ae_helpers as ah
from ae import runs
from support import ROOT, copy_finished_run

DATA = str(ROOT / "data")


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the command line in this process, as `python ae_cli.py ARGS` would in folder ``cwd``."""

    def run(*args, cwd=ROOT):
        monkeypatch.chdir(cwd)
        try:
            code = ae_cli.main(list(args))
        except SystemExit as exit:
            code = exit.code
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--layer-sizes", "100", "0"], "layer_sizes must be a non-empty list of positive integers"),
        (["train", "--layer-sizes", "1.5"], "layer sizes must be integers"),
        (["train", "--layer-sizes", "500,x,2"], "layer sizes must be integers"),
        (["train", "--lr", "-1"], "lr must be a positive number"),
        (["train", "--optimizer", "lbfgs"], "invalid choice"),
        (["train", "--epochs", "-3"], "epochs must be an integer >= 0"),
        (["train", "--device", "tpu"], "choose 'auto', 'cpu', 'cuda' or 'mps'"),
        (["train", "--dropout", "0.5"], "unrecognized arguments: --dropout 0.5"),
        (["train", "--noise", "-1"], "noise must be a standard deviation >= 0"),
        (["train", "--input-dim", "100", "--data", DATA], "input_dim=100 but the images have 784 values each"),
        (["experiments", "--only", "default_layers/nope"], "unknown run"),
        (["experiments", "--jobs", "0"], "jobs must be an integer >= 1"),
    ],
)
def test_bad_input_exits_2_with_usage(args, words, tmp_path, cli):
    if args[0] == "train":
        args = [*args, "--out", "x"]
    result = cli(*args, cwd=tmp_path)  # whatever goes wrong, nothing is written into the repository
    assert result.returncode == 2
    assert f"usage: ae_cli.py {args[0]}" in result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_an_error_inside_training_is_not_reported_as_bad_usage(monkeypatch, tmp_path):
    # Only the checks of the arguments turn a ValueError into usage; a bug in training keeps its traceback.
    def broken(*args, **kwargs):
        raise ValueError("something inside training")

    monkeypatch.setattr(runs, "train_run", broken)
    with pytest.raises(ValueError, match="something inside training"):
        ae_cli.main(["train", "--out", str(tmp_path / "run"), "--data", DATA, "--epochs", "1"])


def test_train_help_shows_every_config_fields_option_and_help(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # wide enough that no help line is wrapped
    result = cli("train", "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for field in dataclasses.fields(ah.RunConfig):
        flag = "--" + field.name.replace("_", "-")
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(flag))
        assert field.metadata["help"] in " ".join(lines[at : at + 2]), field.name  # a long flag: help below
    assert "--layer-sizes SIZES [SIZES ...]" in result.stdout


# Each help page and the HELP texts it shows.
PAGES = {
    (): ("ae_cli.py", "fetch", "train", "experiments"),
    ("fetch",): ("--data",),
    ("train",): ("--out", "--device", "--data"),
    ("experiments",): (
        "--list",
        "--only",
        "--redraw",
        "--force",
        "--jobs",
        "--results",
        "experiments --data",
        "--device",
    ),
}


def test_every_help_page_shows_its_texts_and_defaults(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # nothing wrapped
    for command, keys in PAGES.items():
        page = cli(*command, "--help")
        assert page.returncode == 0
        assert page.stdout.startswith(f"usage: ae_cli.py {' '.join(command)}".rstrip() + " [-h]")
        for key in keys:
            assert ae_cli.HELP[key] in page.stdout, (command, key)
        assert command == () or "(default: " in page.stdout  # each command's options show their defaults
    assert {key for keys in PAGES.values() for key in keys} == set(ae_cli.HELP)  # a new text gets a page here
    assert "--only RUN [RUN ...]" in cli("experiments", "--help").stdout


def test_train_without_out_is_refused_before_anything_is_trained(cli, tmp_path):
    result = cli("train", "--epochs", "1", "--data", DATA, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: ae_cli.py train" in result.stderr
    assert "the following arguments are required: --out" in result.stderr


@pytest.mark.parametrize("command", [["fetch"], ["train", "--out", "run"]])
def test_mnist_is_looked_for_in_data_of_the_folder_the_command_runs_in(command, cli, monkeypatch, tmp_path):
    asked = []

    def record(root, *args, **kwargs):
        asked.append(root)
        raise FileNotFoundError("recorded")  # stop here: nothing fetched, nothing trained

    monkeypatch.setattr(ae_cli, "fetch_mnist", record)
    monkeypatch.setattr(ah, "load_mnist", record)
    result = cli(*command, cwd=tmp_path)
    assert (result.returncode, asked, result.stderr) == (1, ["data"], "error: recorded\n")  # no traceback


def test_without_a_command_the_usage_names_the_commands(cli):
    result = cli()
    assert result.returncode == 2
    assert "usage: ae_cli.py [-h] {fetch,train,experiments}" in result.stderr
    assert "the following arguments are required: command" in result.stderr


def test_fetch_verifies_the_data_folder_it_runs_in(cli):
    # The files are there (`make test` fetches them first): checked by SHA-256, nothing fetched, nothing said.
    result = cli("fetch", cwd=ROOT)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], dict(only=None, root=str(runs.PROJECT_ROOT), data_root=None, redraw=False, force=False, jobs=1)),
        (
            ["--only", "mynet/adam_lr5e-4", "--results", "R", "--data", "D", "--redraw", "--force", "--jobs", "3"],
            dict(only=["mynet/adam_lr5e-4"], root="R", data_root="D", redraw=True, force=True, jobs=3),
        ),
    ],
)
def test_experiments_options_reach_the_runner(args, expected, cli, monkeypatch):
    called = []
    monkeypatch.setattr(ae_cli, "run_experiments", lambda only, **options: called.append(dict(only=only, **options)))
    assert cli("experiments", *args, "--device", "cpu").returncode == 0
    assert called == [{**expected, "device": "cpu"}]


def test_experiments_list_names_every_run_and_whether_it_is_finished(cli, tmp_path):
    # A finished run, and the same files under a run whose config differs (seed 1): that one is still to do.
    for name in ("mynet/adam_lr5e-4", "mynet/adam_lr5e-4_seed1"):
        copy_finished_run("mynet/adam_lr5e-4", tmp_path, as_name=name)
    result = cli("experiments", "--list", "--results", str(tmp_path))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == len(runs.EXPERIMENTS)
    for line, (name, config) in zip(lines, runs.EXPERIMENTS.items()):
        state = "finished" if name == "mynet/adam_lr5e-4" else "to do"
        assert line == f"{name:45s} {config.epochs:4d} epochs  {state}"


def test_train_writes_a_finished_run_folder(tmp_path, cli):
    out = tmp_path / "cli_run"
    args = ["--layer-sizes", "32,2", "--epochs", "1", "--train-subset", "1000", "--device", "cpu", "--data", DATA]
    result = cli("train", "--out", str(out), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "history.csv", "model.pt", "metrics.json", "learning_curve.png", "latent_space.png"):
        assert (out / name).is_file(), name
    assert (out / "test_data_tracking" / "epoch_001.png").is_file()
    assert json.loads((out / "config.json").read_text())["layer_sizes"] == [32, 2]
    assert result.stdout.endswith(json.dumps(json.loads((out / "metrics.json").read_text()), indent=2) + "\n")


def test_train_trains_on_the_data_it_loaded_on_the_device_asked(tmp_path, cli, monkeypatch):
    loaded, trained = [], []
    load = ah.load_mnist
    monkeypatch.setattr(ah, "load_mnist", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])

    def train(config, data, run_dir, device):
        trained.append((data, run_dir, device))
        raise FileNotFoundError("stop before training")

    monkeypatch.setattr(runs, "train_run", train)
    result = cli("train", "--out", "run", "--data", DATA, "--no-normalize", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 1
    assert trained == [(loaded[0], "run", "cpu")]
    assert loaded[0].std == 1.0  # --no-normalize: loaded in pixel units


# Every RunConfig field, each away from its default: (command-line arguments, value in config.json).
# input_dim has no other valid value for MNIST: its option is tested above (a wrong one exits 2).
FLAGS = {
    "layer_sizes": (["--layer-sizes", "24", "2"], [24, 2]),
    "activation": (["--activation", "tanh"], "tanh"),
    "optimizer": (["--optimizer", "sgd_momentum"], "sgd_momentum"),
    "lr": (["--lr", "0.002"], 0.002),
    "batch_size": (["--batch-size", "50"], 50),
    "epochs": (["--epochs", "1"], 1),
    "seed": (["--seed", "7"], 7),
    "loss": (["--loss", "l1"], "l1"),
    "normalize": (["--no-normalize"], False),
    "shuffle": (["--no-shuffle"], False),
    "val_size": (["--val-size", "1000"], 1000),
    "train_subset": (["--train-subset", "300"], 300),
    "schedule": (["--schedule", "cosine"], "cosine"),
    "weight_decay": (["--weight-decay", "0.01"], 0.01),
    "momentum": (["--momentum", "0.5"], 0.5),
    "bf16": (["--bf16"], True),
    "ema": (["--ema", "0.9"], 0.9),
    "noise": (["--noise", "0.3"], 0.3),
    "track_every": (["--track-every", "2"], 2),
}


def test_every_config_field_reaches_the_runs_config(tmp_path, cli):
    defaults = ah.RunConfig().to_dict()
    assert set(FLAGS) | {"input_dim"} == set(defaults)  # a new field gets a line here
    args = [a for flag_args, _ in FLAGS.values() for a in flag_args]
    out = tmp_path / "flags"
    result = cli("train", "--out", str(out), "--device", "cpu", "--data", DATA, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    for field, (_, expected) in FLAGS.items():
        assert expected != defaults[field], f"{field}: choose a value other than the default"
        assert saved[field] == expected, field


def test_parallel_experiments_skip_finished_runs_and_a_worker_trains_through_the_cli(tmp_path, cli, monkeypatch):
    # A copy of a finished run under another results folder: a real worker process, launched with
    # the same command line `make results --jobs` uses, finds it finished and writes the summary.
    name = "mynet/adam_lr5e-4"
    shutil.copytree(ROOT / name, tmp_path / name)
    assert ae_cli._launch_worker(name, tmp_path, DATA, 1, False, "cpu") == 0
    log = (tmp_path / name / "train.log").read_text()
    assert f"{name}: finished, skipped" in log, log
    assert "adam_lr5e-4 |" in (tmp_path / "mynet" / "summary.md").read_text()
    # Nothing to launch now; a worker launched anyway would train real runs for hours: fail at once instead.
    monkeypatch.setattr(ae_cli, "_launch_worker", lambda name, *args: pytest.fail(f"launched a worker for {name}"))
    result = cli("experiments", "--jobs", "2", "--only", name, "--results", str(tmp_path), "--data", DATA)
    assert result.returncode == 0, result.stderr
    assert f"{name}: finished, skipped" in result.stdout


def test_the_runner_trains_a_missing_run_then_skips_it(tmp_path, mnist, monkeypatch, capsys):
    tiny = ah.RunConfig(layer_sizes=(16, 2), epochs=1, train_subset=500, batch_size=100)
    monkeypatch.setitem(runs.EXPERIMENTS, "mynet/tiny", tiny)
    ae_cli.run_experiments(["mynet/tiny"], root=tmp_path, data_root=DATA, progress=False)
    assert "[1/1] mynet/tiny: training 1 epochs" in capsys.readouterr().out
    assert runs.run_is_complete(tmp_path / "mynet/tiny", tiny)
    assert (tmp_path / "mynet/tiny/latent_space.png").is_file()
    assert "| tiny | 1 |" in (tmp_path / "mynet/summary.md").read_text()
    ae_cli.run_experiments(["mynet/tiny"], root=tmp_path, data_root=DATA, progress=False)
    assert "[1/1] mynet/tiny: finished, skipped" in capsys.readouterr().out


def test_redraw_measures_a_finished_run_again_with_its_own_split(tmp_path, capsys):
    name = "mynet/adam_lr5e-4"
    shutil.copytree(ROOT / name, tmp_path / name)
    committed = json.loads((ROOT / name / "metrics.json").read_text())
    (tmp_path / name / "latent_space.png").unlink()
    (tmp_path / name / "metrics.json").write_text(json.dumps({**committed, "test_mse": 9.0}))
    ae_cli.run_experiments([name], root=tmp_path, data_root=DATA, redraw=True, progress=False)
    assert f"{name}: finished, skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / name / "metrics.json").read_text()) == committed
    assert (tmp_path / name / "latent_space.png").is_file()
