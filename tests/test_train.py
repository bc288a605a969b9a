"""Training: reproducible, resumable after a kill, stops on divergence, loads safely."""

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
import torch.nn.functional as F

import ae.metrics as ae_metrics
import ae_helpers as ah
from ae import figures, runs
from support import ROOT, copy_finished_run


def test_same_seed_same_losses_other_seed_other_losses(mnist, small_config):
    first = runs.train_run(small_config, mnist, progress=False)
    again = runs.train_run(small_config, mnist, progress=False)
    other = runs.train_run(ah.RunConfig(**{**small_config.to_dict(), "seed": 1}), mnist, progress=False)
    assert first.history["train_loss"] == again.history["train_loss"]
    assert first.history["test_loss"] == again.history["test_loss"]
    assert first.history["train_loss"] != other.history["train_loss"]


def test_training_reduces_loss_and_keeps_best_validation_weights(mnist, small_config):
    run = runs.train_run(small_config, mnist, progress=False)
    h = run.history
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["val_loss"][-1] < h["val_loss"][0]
    best = min(range(len(h["val_loss"])), key=h["val_loss"].__getitem__)
    assert run.metrics["best_epoch"] == h["epoch"][best]
    assert run.metrics["val_mse"] == pytest.approx(h["val_loss"][best], rel=1e-4)
    assert 0 < run.metrics["knn5_accuracy"] <= 1


def test_a_runs_times_add_up_within_the_call_and_give_its_throughput(mnist, small_config):
    start = time.perf_counter()
    run = runs.train_run(small_config, mnist, progress=False)
    elapsed = time.perf_counter() - start
    seconds, metrics = run.history["seconds"], run.metrics
    assert all(s > 0 for s in seconds) and sum(seconds) < elapsed
    assert metrics["seconds"] == round(sum(seconds), 1)  # metrics.json keeps 0.1 s and 0.01 s
    assert 0 < metrics["train_seconds"] <= sum(seconds) + 0.005
    assert metrics["train_seconds"] == round(metrics["train_seconds"], 2)
    assert _throughput_is(metrics, small_config.train_subset * small_config.epochs)
    assert metrics["device"] == ah.device_name("cpu")  # where it ran (tests pin the CPU)


def test_the_training_time_adds_up_each_epochs_training_part_without_its_evaluation(mnist, small_config, monkeypatch):
    ticks = iter(range(100))  # a clock that moves 1 s at each reading: each epoch trains 1 s and takes 2 s in all
    monkeypatch.setattr(ah, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    run = runs.train_run(small_config, mnist, progress=False)
    assert run.history["seconds"] == [2.0, 2.0, 2.0]
    assert (run.metrics["seconds"], run.metrics["train_seconds"]) == (6.0, 3.0)
    assert run.metrics["samples_per_second"] == small_config.train_subset  # 3 epochs of 2,000 images in 3 s


def _throughput_is(metrics, images) -> bool:
    """samples_per_second is ``images`` / train_seconds, taken before train_seconds was rounded to 0.01 s."""
    fastest, slowest = metrics["train_seconds"] - 0.005, metrics["train_seconds"] + 0.005
    return images / slowest - 1 <= metrics["samples_per_second"] <= images / fastest + 1


def test_the_progress_bar_and_the_tracked_epochs_follow_the_run(mnist, small_config, capsys):
    run = runs.train_run(small_config.replace(track_every=2), mnist)  # by default, with a progress bar
    shown, h = capsys.readouterr().err, run.history
    assert f"64-2 relu adam lr={small_config.lr:g} bs=100" in shown and "3/3" in shown and "epoch/s" in shown
    assert shown.endswith("\n")  # the finished bar stays on screen
    assert f"train={h['train_loss'][-1]:.4f}, val={h['val_loss'][-1]:.4f}" in shown
    assert run.tracking["epochs"] == [0, 2, 3]  # the start, every 2nd epoch and the last
    assert run.tracking["test"].shape == run.tracking["train"].shape == (3, 10, 784)
    assert not run.metrics["diverged"]
    # what is tracked: the run's reconstructions of one image of each digit, in pixel units
    train_idx, _ = ah.run_split(small_config, len(mnist.train_images))
    tracked = {
        "test": mnist.test_images[ah.tracking_indices(mnist.test_labels)],
        "train": mnist.train_images[train_idx][ah.tracking_indices(mnist.train_labels[train_idx])],
    }
    best = run.tracking["epochs"].index(run.metrics["best_epoch"])
    torch.manual_seed(small_config.seed)
    initial = ah.build_model(small_config)  # epoch 0: the seeded, untrained weights
    for name, images in tracked.items():
        assert torch.equal(run.tracking[name][0], _shown(initial, images, mnist))
        assert torch.equal(run.tracking[name][best], _shown(run.model, images, mnist))
        assert torch.equal(run.tracking[f"{name}_originals"], _shown(torch.nn.Identity(), images, mnist))


def _shown(model, images, data):
    """The model's reconstructions of ``images`` as a run tracks them: uint8 pixels."""
    with torch.no_grad():
        return ah.as_uint8(ah.pixel_values(model(images), data))


def _scripted_validation(monkeypatch, val_losses, val_size):
    """The validation loss that training sees, epoch by epoch (the weights and all else are real)."""
    real, script = ah.evaluate_loss, list(val_losses)

    def evaluate_loss(model, images, loss="mse", **kwargs):
        if len(images) == val_size and script:
            return script.pop(0)
        return real(model, images, loss, **kwargs)

    monkeypatch.setattr(ah, "evaluate_loss", evaluate_loss)


def test_when_validation_loss_rises_the_best_epochs_weights_are_kept_not_the_last(mnist, small_config, monkeypatch):
    config = ah.RunConfig(**{**small_config.to_dict(), "epochs": 4})
    _scripted_validation(monkeypatch, [0.9, 0.5, 0.5, 0.8], config.val_size)  # a tie keeps the earlier epoch
    run = runs.train_run(config, mnist, progress=False)
    _scripted_validation(monkeypatch, [0.9, 0.5], config.val_size)
    two_epochs = runs.train_run(ah.RunConfig(**{**config.to_dict(), "epochs": 2}), mnist, progress=False)
    assert run.metrics["best_epoch"] == 2
    assert run.history["val_loss"] == [0.9, 0.5, 0.5, 0.8]
    for name, weights in run.model.state_dict().items():
        assert torch.equal(weights, two_epochs.model.state_dict()[name]), name


def test_run_folder_is_complete_and_loads(mnist, small_config, tmp_path):
    run = runs.train_run(small_config, mnist, run_dir=tmp_path / "run", progress=False)
    assert runs.run_is_complete(tmp_path / "run", small_config)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    loaded = runs.load_run(tmp_path / "run")
    assert loaded.config == small_config
    assert loaded.metrics == run.metrics
    assert loaded.history["train_loss"] == pytest.approx(run.history["train_loss"])
    x = mnist.test_images[:10]
    assert torch.equal(loaded.model(x), run.model(x))
    assert loaded.tracking["epochs"] == [0, 1, 2, 3]
    assert loaded.tracking["test"].shape == (4, 10, 784)


def test_a_folder_trained_with_another_config_is_retrained(mnist, small_config, tmp_path, capsys):
    runs.train_run(small_config, mnist, run_dir=tmp_path / "run", progress=False)
    other = ah.RunConfig(**{**small_config.to_dict(), "lr": 1e-3})
    run = runs.load_or_train(other, tmp_path / "run", mnist, progress=False)
    assert "trained with another config; retraining" in capsys.readouterr().out
    assert run.config == other
    assert ah.RunConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == other
    missing = runs.load_or_train(small_config, tmp_path / "absent", mnist, progress=False)
    assert runs.run_is_complete(tmp_path / "absent", small_config)
    assert missing.model is not None


def test_a_finished_folder_trained_again_is_unfinished_until_the_new_run_is(mnist, small_config, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    runs.train_run(small_config, mnist, run_dir=folder, progress=False)
    assert runs.run_is_complete(folder)
    _interrupt(small_config.replace(lr=1e-3), mnist, folder, monkeypatch)  # the new run is stopped in its 3rd epoch
    assert not runs.run_is_complete(folder)  # the old run's metrics.json is gone: nothing passes it off as the new one
    assert not (folder / "metrics.json").exists()
    assert json.loads((folder / "config.json").read_text()) == small_config.replace(lr=1e-3).to_dict()  # what it trains


def test_a_run_killed_after_its_last_checkpoint_finishes_without_training_again(
    mnist, small_config, tmp_path, monkeypatch
):
    folder, measure = tmp_path / "run", runs.measure_run

    def killed(*args):
        raise KeyboardInterrupt  # after the last epoch's checkpoint, before the run folder is written

    monkeypatch.setattr(runs, "measure_run", killed)
    with pytest.raises(KeyboardInterrupt):
        runs.train_run(small_config, mnist, run_dir=folder, progress=False)
    assert (folder / "checkpoint.pt").exists() and not runs.run_is_complete(folder)
    monkeypatch.setattr(runs, "measure_run", measure)
    monkeypatch.setattr(ah, "train_epoch", lambda *args, **kwargs: pytest.fail("an epoch was trained again"))
    run = runs.train_run(small_config, mnist, run_dir=folder, progress=False)
    assert runs.run_is_complete(folder, small_config) and run.metrics["epochs_run"] == small_config.epochs
    assert run.metrics["train_seconds"] == 0 and run.metrics["samples_per_second"] is None  # none trained in this call


def test_divergence_stops_warns_keeps_best_weights_and_plots_finite_part(mnist, small_config):
    config = ah.RunConfig(**{**small_config.to_dict(), "optimizer": "sgd_momentum", "lr": 20.0, "epochs": 6})
    with pytest.warns(RuntimeWarning) as caught:
        run = ah.train(config, mnist, progress=False)  # the loop warns; its caller's line is shown
    message = str(caught[0].message)
    losses = run.history["train_loss"]
    assert message.startswith(f"training diverged at epoch {len(losses)}: the loss became {losses[-1]}. ")
    assert f"the best weights so far (epoch {run.metrics['best_epoch']}) are kept" in message
    assert message.endswith("Try a smaller learning rate (for SGD with momentum, 10x smaller) or Adam.")
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampolines add stack frames of their own
        assert caught[0].filename == __file__  # the warning points at the caller's line, not inside ae_helpers
    assert run.metrics["diverged"]
    assert not math.isfinite(losses[-1])
    assert len(losses) < 6
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    fig = figures.plot_learning_curves({"diverged": run})
    for line in fig.axes[0].lines:
        assert all(math.isfinite(y) for y in line.get_ydata())


def test_a_run_that_diverges_in_its_first_epoch_keeps_and_saves_its_initial_weights(mnist, small_config, tmp_path):
    config = ah.RunConfig(**{**small_config.to_dict(), "optimizer": "sgd_momentum", "lr": 1e3})
    with pytest.warns(RuntimeWarning, match="diverged at epoch 1"):
        run = runs.train_run(config, mnist, run_dir=tmp_path, progress=False)
    torch.manual_seed(config.seed)
    initial = ah.build_model(config).state_dict()
    assert run.metrics["best_epoch"] == 0 and run.metrics["diverged"] and run.metrics["epochs_run"] == 1
    assert all(torch.equal(w, initial[name]) for name, w in run.model.state_dict().items())
    assert runs.run_is_complete(tmp_path, config) and not (tmp_path / "checkpoint.pt").exists()
    saved = runs.load_run(tmp_path, require_model=True)
    assert all(torch.equal(w, initial[name]) for name, w in saved.model.state_dict().items())


SLOW_RUN = dict(layer_sizes=[256, 2], epochs=4, train_subset=20000, batch_size=32, track_every=2)


def test_killed_run_is_not_finished_and_resumes_to_the_same_result(mnist, tmp_path):
    run_dir = tmp_path / "killed"
    script = (
        "import ae_helpers as ah; from ae import runs; "
        f"runs.train_run(ah.RunConfig(**{SLOW_RUN!r}), ah.load_mnist({str(ROOT / 'data')!r}), "
        f"run_dir={str(run_dir)!r}, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoint.pt").exists()
    assert (run_dir / "config.json").exists()
    assert not runs.run_is_complete(run_dir)
    with pytest.raises(FileNotFoundError, match="holds no finished run"):
        runs.load_run(run_dir)
    done_epochs = torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done_epochs < SLOW_RUN["epochs"]

    config = ah.RunConfig(**SLOW_RUN)
    resumed = runs.train_run(config, mnist, run_dir=run_dir, progress=False)
    straight = runs.train_run(config, mnist, progress=False)
    assert resumed.history["train_loss"] == straight.history["train_loss"]
    assert resumed.history["val_loss"] == straight.history["val_loss"]
    assert all(
        torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values())
    )
    assert runs.run_is_complete(run_dir, config)
    assert _throughput_is(resumed.metrics, SLOW_RUN["train_subset"] * (SLOW_RUN["epochs"] - done_epochs))


def test_weights_of_another_architecture_or_not_a_checkpoint(tmp_path):
    torch.save(ah.Autoencoder((500, 200, 2)).state_dict(), tmp_path / "mynet.pt")
    with pytest.raises(ValueError, match="weights of another architecture than 1000-500-250-2"):
        runs.load_weights(ah.Autoencoder(), tmp_path / "mynet.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a weights file"):
        runs.load_weights(ah.Autoencoder(), tmp_path / "notes.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"encoder.0.weight": _Exploit(marker)}, f)
    with pytest.raises(ValueError, match="not a weights file"):
        runs.load_weights(ah.Autoencoder(), tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_runs_tracking_file_never_runs_pickled_code(tmp_path):
    run_dir = copy_finished_run("mynet/adam_lr5e-4", tmp_path)  # no weights, no tracking.pt
    assert runs.load_run(run_dir).tracking is None
    marker = tmp_path / "pwned"
    with open(run_dir / "tracking.pt", "wb") as f:
        pickle.dump({"epochs": _Exploit(marker)}, f, protocol=2)  # the protocol torch.save uses
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        runs.load_run(run_dir)
    assert not marker.exists()


def test_get_run_loads_the_committed_run(mnist, monkeypatch):
    monkeypatch.setattr(runs, "train_run", lambda *a, **k: pytest.fail("a finished run is loaded, not trained"))
    name = "default_layers/adam_lr5e-4"
    run = runs.get_run(name, mnist, need_model=True, progress=False)
    assert run.run_dir == ROOT / name
    assert run.metrics == json.loads((ROOT / name / "metrics.json").read_text())
    assert run.model is not None


def test_a_run_without_its_weights_is_trained_again_only_when_the_weights_are_needed(mnist, small_config, tmp_path):
    runs.train_run(small_config, mnist, run_dir=tmp_path / "run", progress=False)
    (tmp_path / "run" / "model.pt").unlink()  # as for the runs whose weights are not committed
    assert runs.load_or_train(small_config, tmp_path / "run", mnist, progress=False).model is None
    run = runs.load_or_train(small_config, tmp_path / "run", mnist, need_model=True, progress=False)
    assert run.model is not None and (tmp_path / "run" / "model.pt").is_file()


def test_weight_average_is_an_exponential_moving_average():
    model = torch.nn.Linear(3, 2)
    average = ah.WeightAverage(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)
    for a, s in zip(average.model.parameters(), start):
        assert torch.allclose(a, s + 0.1)
        assert not a.requires_grad


def _interrupt(config, mnist, run_dir, monkeypatch):
    """Train ``config`` into ``run_dir``, interrupted in its third epoch: a checkpoint of two epochs is left."""
    real_epoch, calls = ah.train_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(ah, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runs.train_run(config, mnist, run_dir=run_dir, progress=False)
    monkeypatch.setattr(ah, "train_epoch", real_epoch)


def _interrupted_then_resumed(config, mnist, run_dir, monkeypatch):
    """Train ``config`` into ``run_dir``, interrupted in its third epoch; resume; return the resumed run."""
    _interrupt(config, mnist, run_dir, monkeypatch)
    return runs.train_run(config, mnist, run_dir=run_dir, progress=False)


def test_a_checkpoint_is_resumed_unless_asked_not_to_and_never_runs_pickled_code(
    mnist, small_config, tmp_path, monkeypatch
):
    run_dir = tmp_path / "runs" / "interrupted"  # its parent folder does not exist yet either
    _interrupt(small_config, mnist, run_dir, monkeypatch)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    checkpoint["history"]["train_loss"][0] = 123.0  # marks what was resumed, not trained again
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    fresh_dir = tmp_path / "fresh"
    shutil.copytree(run_dir, fresh_dir)

    resumed = runs.train_run(small_config, mnist, run_dir=run_dir, progress=False)
    fresh = runs.train_run(small_config, mnist, run_dir=fresh_dir, progress=False, resume=False)
    assert resumed.history["train_loss"][0] == 123.0 and len(resumed.history["epoch"]) == 3
    assert fresh.history["train_loss"][0] != 123.0 and len(fresh.history["epoch"]) == 3
    assert resumed.history["train_loss"][1:] == fresh.history["train_loss"][1:]
    assert not (run_dir / "checkpoint.pt").exists() and not (fresh_dir / "checkpoint.pt").exists()

    marker = tmp_path / "pwned"
    with open(run_dir / "checkpoint.pt", "wb") as f:
        pickle.dump({"config": _Exploit(marker)}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        runs.train_run(small_config, mnist, run_dir=run_dir, progress=False)
    assert not marker.exists()


def test_averaged_weights_are_the_ones_evaluated_kept_and_resumed(mnist, small_config, tmp_path, monkeypatch):
    config = ah.RunConfig(**{**small_config.to_dict(), "ema": 0.99, "epochs": 4})
    plain = runs.train_run(small_config, mnist, progress=False)
    averaged = runs.train_run(config, mnist, progress=False)
    # Same steps as the plain run (same seed), but the losses are the average's.
    assert averaged.history["train_loss"][:3] == plain.history["train_loss"]
    assert averaged.history["val_loss"][:3] != plain.history["val_loss"]
    val = averaged.history["val_loss"]
    assert all(later < earlier for earlier, later in zip(val, val[1:]))  # the average learns, epoch by epoch
    best = averaged.metrics["best_epoch"]
    assert averaged.metrics["val_mse"] == pytest.approx(averaged.history["val_loss"][best - 1], rel=1e-4)
    assert averaged.metrics["test_mse"] == pytest.approx(averaged.history["test_loss"][best - 1], rel=1e-4)

    # Interrupted after two epochs, then resumed: the average is restored from the checkpoint.
    resumed = _interrupted_then_resumed(config, mnist, tmp_path / "run", monkeypatch)
    assert resumed.history["val_loss"] == averaged.history["val_loss"]
    assert all(
        torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), averaged.model.state_dict().values())
    )


def test_an_l1_run_is_validated_and_tested_in_l1(mnist, small_config):
    config = small_config.replace(loss="l1", epochs=2)
    run = runs.train_run(config, mnist, progress=False)
    _, val_idx = ah.run_split(config, len(mnist.train_images))
    best = run.metrics["best_epoch"] - 1
    for column, images in (("val_loss", mnist.train_images[val_idx]), ("test_loss", mnist.test_images)):
        assert run.history[column][best] == pytest.approx(ah.evaluate_loss(run.model, images, "l1"), rel=1e-6)


def test_denoising_corrupts_the_inputs_only_and_repeats_on_resume(mnist, small_config, tmp_path, monkeypatch):
    # The model sees noisy inputs, the loss compares with the clean image.
    model = ah.Autoencoder((8, 2))
    seen, targets = [], []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    images = torch.randn(32, 784)

    def loss_fn(output, target):
        targets.append(target.clone())
        return F.mse_loss(output, target)

    optimizer = ah.make_optimizer(model, ah.RunConfig())
    generator = torch.Generator().manual_seed(0)
    ah.train_epoch(model, optimizer, images, torch.arange(32), 32, loss_fn, noise=0.5, noise_generator=generator)
    assert torch.equal(targets[0], images)
    assert (seen[0] - images).std().item() == pytest.approx(0.5, rel=0.05)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[0], images + 0.5 * noise)  # the image plus the generator's noise, as documented

    # Same config: the same losses; interrupted and resumed: the same noise, so the same run.
    config = ah.RunConfig(**{**small_config.to_dict(), "noise": 0.5, "epochs": 4})
    once, again = (runs.train_run(config, mnist, progress=False) for _ in range(2))
    assert once.history["train_loss"] == again.history["train_loss"]
    clean = runs.train_run(ah.RunConfig(**{**config.to_dict(), "noise": 0.0}), mnist, progress=False)
    assert once.history["train_loss"][0] > clean.history["train_loss"][0]  # noisy inputs are harder
    resumed = _interrupted_then_resumed(config, mnist, tmp_path / "run", monkeypatch)
    assert resumed.history["train_loss"] == once.history["train_loss"]
    assert resumed.metrics["test_mse"] == once.metrics["test_mse"]


@pytest.mark.parametrize("bf16, dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_an_epoch_computes_in_bfloat16_only_when_asked(bf16, dtype):
    torch.manual_seed(0)
    model, seen = ah.Autoencoder((16, 2)), set()
    model.encoder[0].register_forward_hook(lambda module, args, output: seen.add(output.dtype))
    images = torch.randn(64, 784)
    ah.train_epoch(model, torch.optim.Adam(model.parameters()), images, torch.arange(64), 32, bf16=bf16)
    assert seen == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32 either way


def test_runs_saved_before_a_new_config_field_still_count_as_finished(mnist, small_config, tmp_path):
    # config.json written before RunConfig gained a field (here: ema) must not send the run back to training
    runs.train_run(small_config, mnist, run_dir=tmp_path / "run", progress=False)
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    del saved["ema"]
    path.write_text(json.dumps(saved))
    assert runs.run_is_complete(tmp_path / "run", small_config)
    assert not runs.run_is_complete(tmp_path / "run", ah.RunConfig(**{**small_config.to_dict(), "ema": 0.9}))
    path.write_text(json.dumps({**saved, "no_such_field": 1}))
    assert not runs.run_is_complete(tmp_path / "run", small_config)


def test_an_epoch_takes_only_the_batches_its_order_names():
    # an order shorter than the image tensor (as in the benchmark) must not add empty, NaN-loss steps
    model = ah.Autoencoder((8, 2))
    optimizer = ah.make_optimizer(model, ah.RunConfig())
    steps = []
    optimizer.register_step_post_hook(lambda *args: steps.append(1))
    total = ah.train_epoch(model, optimizer, torch.randn(100, 784), torch.arange(40), 16)
    assert len(steps) == 3
    assert torch.isfinite(total)


def test_mnist_is_loaded_as_the_config_says_only_when_no_data_is_given(mnist, small_config, monkeypatch):
    loads = []
    monkeypatch.setattr(ah, "load_mnist", lambda **kwargs: loads.append(kwargs) or mnist)
    config = small_config.replace(epochs=1)
    runs.train_run(config, mnist, progress=False)
    assert loads == []
    runs.train_run(config, progress=False)
    assert loads == [{"normalize": True}]


def test_an_epoch_steps_once_per_batch_the_last_one_short(mnist, small_config, monkeypatch):
    steps, make = [], ah.make_optimizer

    def counting(model, config):
        optimizer = make(model, config)
        optimizer.register_step_post_hook(lambda *args: steps.append(1))
        return optimizer

    monkeypatch.setattr(ah, "make_optimizer", counting)
    runs.train_run(small_config.replace(epochs=2, batch_size=300), mnist, progress=False)
    assert len(steps) == 2 * 7  # 2,000 images in batches of 300: six full ones and one of 200, each epoch


def test_an_epoch_returns_its_loss_summed_over_images_the_last_batch_short():
    torch.manual_seed(0)
    model, images = ah.Autoencoder((16, 2)), torch.randn(70, 784)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay: each batch sees the same model
    total = ah.train_epoch(model, frozen, images, torch.arange(70), 32)  # batches of 32, 32 and 6
    assert float(total) / 70 == pytest.approx(ah.evaluate_loss(model, images), rel=1e-5)


def test_without_a_validation_split_the_lowest_training_loss_keeps_its_weights(mnist, small_config, monkeypatch):
    real, script = ah.train_epoch, [0.9, 0.5, 0.8]

    def scripted(model, optimizer, images, *args, **kwargs):  # trains for real; reports the scripted mean loss
        real(model, optimizer, images, *args, **kwargs)
        return torch.tensor(script.pop(0) * len(images))

    monkeypatch.setattr(ah, "train_epoch", scripted)
    run = runs.train_run(small_config.replace(val_size=0), mnist, progress=False)
    assert run.history["train_loss"] == pytest.approx([0.9, 0.5, 0.8])
    assert all(math.isnan(loss) for loss in run.history["val_loss"]) and math.isnan(run.metrics["val_mse"])
    assert run.metrics["best_epoch"] == 2
    images = mnist.test_images[ah.tracking_indices(mnist.test_labels)]
    assert torch.equal(run.tracking["test"][2], _shown(run.model, images, mnist))  # the weights kept: epoch 2's


def test_each_epoch_visits_every_image_once_in_an_order_of_its_own_seed_and_epoch():
    config = ah.RunConfig(seed=1)
    orders = {(s, e): ah.epoch_order(config.replace(seed=s), 500, e, "cpu").tolist() for s in (1, 2) for e in (1, 2)}
    assert all(sorted(order) == list(range(500)) for order in orders.values())
    assert len({tuple(order) for order in orders.values()}) == 4  # another epoch or seed: another order
    assert ah.epoch_order(config, 500, 2, "cpu").tolist() == orders[(1, 2)]  # a resumed epoch repeats its order
    assert ah.epoch_order(config.replace(shuffle=False), 500, 2, "cpu").tolist() == list(range(500))
    for shuffle in (True, False):  # the order lives where the images do
        assert ah.epoch_order(config.replace(shuffle=shuffle), 5, 1, "meta").device.type == "meta"


def test_a_runs_splits_are_cut_from_its_own_data_and_placed_on_its_device(mnist):
    data, config = mnist.subset(3000), ah.RunConfig(val_size=500, train_subset=1000)
    train_idx, val_idx = ah.run_split(config, 3000)
    splits = ah.place_data(config, data, "cpu")
    assert torch.equal(splits.train_idx, train_idx) and torch.equal(splits.val_idx, val_idx)
    assert torch.equal(splits.train, data.train_images[train_idx])
    assert torch.equal(splits.val, data.train_images[val_idx])
    assert torch.equal(splits.test, data.test_images)
    on_meta = ah.place_data(config, data, "meta")  # a stand-in for a GPU: no memory, no accelerator needed
    placed = [on_meta.train, on_meta.val, on_meta.test, *on_meta.tracked.values()]
    assert [tensor.device.type for tensor in placed] == ["meta"] * 5


def test_a_runs_model_and_the_checkpoint_it_resumes_go_to_its_device(mnist, tmp_path):
    data, config = mnist.subset(3000), ah.RunConfig(layer_sizes=(16, 2), val_size=500, train_subset=1000)
    on_cpu = ah.place_data(config, data, "cpu")
    saved = ah.new_training_state(config, on_cpu, data, "cpu")  # a checkpoint written on the CPU
    torch.save({"config": config.to_dict(), **saved.state_dict()}, tmp_path / "checkpoint.pt")
    splits = ah.place_data(config, data, "meta")  # a stand-in for a GPU: no memory, no accelerator needed
    splits.tracked = on_cpu.tracked  # (tracked images are drawn as pixels, which needs values)
    state = ah.new_training_state(config, splits, data, "meta")
    assert ah.model_device(state.model).type == "meta"
    assert ah.resume_from_checkpoint(state, tmp_path / "checkpoint.pt", config, torch.device("meta"))
    assert {tensor.device.type for tensor in state.best.weights.values()} == {"meta"}


def test_a_runs_split_defaults_to_the_60000_mnist_training_images(small_config):
    train_idx, val_idx = ah.run_split(small_config.replace(train_subset=0))
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(60000))
    assert [i.tolist() for i in ah.run_split(small_config)] == [i.tolist() for i in ah.run_split(small_config, 60000)]


def test_the_tracked_images_are_the_first_of_each_digit_in_digit_order():
    labels = torch.tensor([7, 3, 0, 9, 1, 3, 2, 8, 4, 6, 5, 0, 9])
    assert ah.tracking_indices(labels).tolist() == [2, 4, 6, 1, 8, 10, 9, 0, 7, 3]


def test_the_loop_trains_in_training_mode_and_evaluates_in_eval_mode(mnist, small_config, monkeypatch):
    # Harmless without dropout or batch norm, but it is what Q6.2 teaches: each forward pass in its mode.
    modes = []
    build = ah.build_model

    def recording(config):
        model = build(config)
        model.register_forward_pre_hook(lambda module, args: modes.append((torch.is_grad_enabled(), module.training)))
        return model

    monkeypatch.setattr(ah, "build_model", recording)
    runs.train_run(ah.RunConfig(**{**small_config.to_dict(), "epochs": 1}), mnist, progress=False)
    assert (True, False) not in modes  # no gradient step in eval mode
    assert (False, True) not in modes  # no evaluation in training mode
    assert (True, True) in modes
    assert (False, False) in modes


def test_a_runs_metrics_are_measured_on_its_own_split(mnist, small_config):
    # A run on 2,000 training images: its train MSE is of those images, not of the default 55,000.
    run = runs.train_run(small_config, mnist, progress=False)
    train_idx, val_idx = ah.run_split(small_config, len(mnist.train_images))
    assert len(train_idx) == 2000
    measured = ae_metrics.measure_run(run.model, mnist, train_idx, val_idx)
    assert measured == {k: run.metrics[k] for k in measured}
    full_train, _ = ah.split_indices()
    assert ae_metrics.measure_run(run.model, mnist, full_train, val_idx)["train_mse"] != run.metrics["train_mse"]


def test_a_resumed_cosine_run_continues_its_schedule(mnist, small_config, tmp_path, monkeypatch):
    config = ah.RunConfig(**{**small_config.to_dict(), "schedule": "cosine", "epochs": 3})
    uninterrupted = runs.train_run(config, mnist, progress=False)
    cosine = [config.lr * (1 + math.cos(math.pi * epoch / 3)) / 2 for epoch in range(3)]  # from lr towards 0
    assert uninterrupted.history["lr"] == pytest.approx(cosine)
    resumed = _interrupted_then_resumed(config, mnist, tmp_path / "run", monkeypatch)  # stopped in epoch 3
    assert resumed.history["lr"] == uninterrupted.history["lr"]
    assert resumed.history["train_loss"] == uninterrupted.history["train_loss"]
