"""Run folders (ae_helpers.py): written atomically, recognised as finished only when whole, loaded safely."""

import json

import pytest
import torch

import ae_helpers as ah
from support import ROOT, copy_finished_run

RUN = ROOT / "default_layers/adam_lr5e-4"


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "metrics.json"
    ah.write_json(path, {"test_mse": 0.3})

    def half_then_crash(tmp):
        tmp.write_text('{"test_mse": 0.')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ah._atomic(path, half_then_crash)
    assert json.loads(path.read_text()) == {"test_mse": 0.3}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_is_indented_and_ends_with_a_newline(tmp_path):
    ah.write_json(tmp_path / "a.json", {"b": [1, 2], "a": 0}, sort_keys=True)  # options reach json.dumps
    assert (tmp_path / "a.json").read_text() == '{\n  "a": 0,\n  "b": [\n    1,\n    2\n  ]\n}\n'


@pytest.mark.parametrize("missing", ["metrics.json", "config.json", "history.csv"])
def test_a_run_missing_any_of_its_three_files_is_not_finished(tmp_path, missing):
    copy_finished_run("default_layers/adam_lr5e-4", tmp_path, as_name="run")
    config = ah.RunConfig.from_dict(json.loads((RUN / "config.json").read_text()))
    assert ah.run_is_complete(tmp_path / "run", config)
    (tmp_path / "run" / missing).unlink()
    assert not ah.run_is_complete(tmp_path / "run")


def test_a_run_with_an_unreadable_config_is_not_a_finished_run_of_any_config(tmp_path):
    copy_finished_run("default_layers/adam_lr5e-4", tmp_path, as_name="run")
    (tmp_path / "run" / "config.json").write_text('{"layer_sizes": [1000,')  # cut off
    assert ah.run_is_complete(tmp_path / "run")  # its three files are there
    assert not ah.run_is_complete(tmp_path / "run", ah.RunConfig())


def test_history_reads_epochs_as_integers_and_keeps_nan(tmp_path):
    columns = ah.HISTORY_COLUMNS
    (tmp_path / "history.csv").write_text(
        ",".join(columns) + "\n" + ",".join("1" if c == "epoch" else "nan" for c in columns) + "\n"
    )
    history = ah.read_history(tmp_path / "history.csv")
    assert history["epoch"] == [1] and isinstance(history["epoch"][0], int)
    assert all(str(history[c][0]) == "nan" for c in columns if c != "epoch")


@pytest.mark.parametrize("saved", [{"encoder.0.weight": 1.0}, [torch.zeros(2)]])
def test_a_file_that_is_not_a_state_dict_of_tensors_is_refused(tmp_path, saved):
    torch.save(saved, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="model.pt is not a state dict of tensors; retrain the run"):
        ah.load_weights(ah.Autoencoder(), tmp_path / "model.pt")
