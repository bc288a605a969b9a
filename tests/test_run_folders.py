"""Run folders (ae_helpers.py): written atomically, recognised as finished only when whole, loaded safely."""

import io
import json
import re
import zipfile

import pytest
import torch

import ae_helpers as ah
from ae import plumbing, runs
from support import ROOT, copy_finished_run

RUN = ROOT / "default_layers/adam_lr5e-4"


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "metrics.json"
    runs.write_json(path, {"test_mse": 0.3})

    def half_then_crash(tmp):
        tmp.write_text('{"test_mse": 0.')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        plumbing.atomic_write(path, half_then_crash)
    assert json.loads(path.read_text()) == {"test_mse": 0.3}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_is_indented_and_ends_with_a_newline(tmp_path):
    runs.write_json(tmp_path / "a.json", {"b": [1, 2], "a": 0}, sort_keys=True)  # options reach json.dumps
    assert (tmp_path / "a.json").read_text() == '{\n  "a": 0,\n  "b": [\n    1,\n    2\n  ]\n}\n'


@pytest.mark.parametrize("missing", ["metrics.json", "config.json", "history.csv"])
def test_a_run_missing_any_of_its_three_files_is_not_finished(tmp_path, missing):
    copy_finished_run("default_layers/adam_lr5e-4", tmp_path, as_name="run")
    config = ah.RunConfig.from_dict(json.loads((RUN / "config.json").read_text()))
    assert runs.run_is_complete(tmp_path / "run", config)
    (tmp_path / "run" / missing).unlink()
    assert not runs.run_is_complete(tmp_path / "run")


def test_a_run_with_an_unreadable_config_is_not_a_finished_run_of_any_config(tmp_path):
    copy_finished_run("default_layers/adam_lr5e-4", tmp_path, as_name="run")
    (tmp_path / "run" / "config.json").write_text('{"layer_sizes": [1000,')  # cut off
    assert runs.run_is_complete(tmp_path / "run")  # its three files are there
    assert not runs.run_is_complete(tmp_path / "run", ah.RunConfig())


def test_history_reads_epochs_as_integers_and_keeps_nan(tmp_path):
    columns = ah.HISTORY_COLUMNS
    (tmp_path / "history.csv").write_text(
        ",".join(columns) + "\n" + ",".join("1" if c == "epoch" else "nan" for c in columns) + "\n"
    )
    history = runs.read_history(tmp_path / "history.csv")
    assert history["epoch"] == [1] and isinstance(history["epoch"][0], int)
    assert all(str(history[c][0]) == "nan" for c in columns if c != "epoch")


@pytest.mark.parametrize("saved", [{"encoder.0.weight": 1.0}, [torch.zeros(2)]])
def test_a_file_that_is_not_a_state_dict_of_tensors_is_refused(tmp_path, saved):
    torch.save(saved, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="model.pt is not a state dict of tensors; retrain the run"):
        runs.load_weights(ah.Autoencoder(), tmp_path / "model.pt")


def _as_saved_on_a_gpu(state, path):
    """torch.save(state) as a GPU machine writes it: each tensor's storage located on "cuda:0"."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("/data.pkl"):  # pickled location strings: length (4 bytes) + text
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            target.writestr(name, data)


def test_weights_saved_on_a_gpu_load_on_a_machine_without_one(tmp_path):
    state = torch.load(RUN / "model.pt", weights_only=True)
    _as_saved_on_a_gpu(state, tmp_path / "model.pt")
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really holds GPU tensors; tests see no GPU
        torch.load(tmp_path / "model.pt", weights_only=True)
    model = runs.load_weights(ah.Autoencoder(), tmp_path / "model.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_get_run_hands_its_choices_to_load_or_train(tmp_path, monkeypatch):
    calls, name, data = [], "mynet/adam_lr5e-4", object()
    monkeypatch.setattr(runs, "load_or_train", lambda *args: calls.append(args))
    config, run_dir = runs.EXPERIMENTS[name], tmp_path / name
    runs.get_run(name, data, root=tmp_path)  # defaults: the module's RETRAIN (False), no weights needed, progress
    runs.get_run(name, data, retrain=True, need_model=True, progress=False, root=tmp_path)
    monkeypatch.setattr(runs, "RETRAIN", True)
    runs.get_run(name, data, retrain=False, root=tmp_path)
    runs.get_run(name, data, root=tmp_path)
    assert calls == [
        (config, run_dir, data, False, False, True),
        (config, run_dir, data, True, True, False),
        (config, run_dir, data, False, False, True),
        (config, run_dir, data, True, False, True),
    ]
    choices = ", ".join(runs.EXPERIMENTS)
    with pytest.raises(ValueError, match=re.escape(f"no saved run named 'mynet/nope'; choose one of: {choices}.")):
        runs.get_run("mynet/nope", data, root=tmp_path)


def _error(call) -> Exception:
    try:
        call()
    except Exception as exc:
        return exc
    pytest.fail(f"{call} raised nothing")


def test_load_errors_quote_their_cause_and_say_what_to_do(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    cause = _error(lambda: torch.load(tmp_path / "notes.pt", map_location="cpu", weights_only=True))
    first = str(cause).splitlines()[0]
    assert len(first) > 160  # torch's first line is cut at 160 characters
    assert str(_error(lambda: runs.load_weights(ah.Autoencoder(), tmp_path / "notes.pt"))) == (
        f"{tmp_path / 'notes.pt'} is not a weights file saved by this project ({type(cause).__name__}: "
        f"{first[:160]}). Retrain the run or restore the file."
    )
    for state in (ah.Autoencoder((500, 200, 2)).state_dict(), {}):  # {}: every key missing, a long line
        torch.save(state, tmp_path / "model.pt")
        detail = str(_error(lambda s=state: ah.Autoencoder().load_state_dict(s))).splitlines()[1].strip()
        assert str(_error(lambda: runs.load_weights(ah.Autoencoder(), tmp_path / "model.pt"))) == (
            f"{tmp_path / 'model.pt'} holds weights of another architecture than 1000-500-250-2 ({detail[:200]}). "
            "Build the model with the layer_sizes in the run's config.json."
        )
    assert len(detail) > 200
    assert str(_error(lambda: runs.load_run(tmp_path / "run"))) == (
        f"{tmp_path / 'run'} holds no finished run (metrics.json is missing: the run never started, is still "
        "training or was interrupted). Train it: `python ae_cli.py experiments --only ...` resumes it, or "
        "train_run(config, run_dir=...)."
    )


def test_load_or_train_trains_a_missing_run_with_the_data_and_progress_given(tmp_path, monkeypatch, capsys):
    calls, data, config = [], object(), ah.RunConfig()
    monkeypatch.setattr(runs, "train_run", lambda *args, **options: calls.append((args, options)))
    runs.load_or_train(config, tmp_path / "run", data)
    runs.load_or_train(config, tmp_path / "run", data, progress=False)
    assert calls == [
        ((config, data), dict(run_dir=tmp_path / "run", progress=True)),
        ((config, data), dict(run_dir=tmp_path / "run", progress=False)),
    ]
    assert capsys.readouterr().out == ""  # a missing run was not "trained with another config"
