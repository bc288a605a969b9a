"""The model's shape and the config's validation."""

import dataclasses
import re
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ae_helpers as ah
from ae import analyses, plumbing, runs
from support import ROOT


def test_default_architecture_is_mirrored_with_linear_bottleneck_and_output():
    model = ah.Autoencoder()
    enc = [m.out_features for m in model.encoder if isinstance(m, nn.Linear)]
    dec = [m.out_features for m in model.decoder if isinstance(m, nn.Linear)]
    assert enc == [1000, 500, 250, 2]
    assert dec == [250, 500, 1000, 784]
    assert isinstance(model.encoder[-1], nn.Linear)
    assert isinstance(model.decoder[-1], nn.Linear)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 6
    assert ah.count_parameters(model) == 2 * (784 * 1000 + 1000 * 500 + 500 * 250 + 250 * 2) + (
        1000 + 500 + 250 + 2
    ) + (250 + 500 + 1000 + 784)
    x = torch.randn(5, 784)
    assert model.encode(x).shape == (5, 2)
    assert model(x).shape == (5, 784)
    assert torch.equal(model(x), model.decode(model.encode(x)))


def test_the_model_takes_a_dataloader_batch_of_images(mnist):
    from torchvision import datasets, transforms

    from support import ROOT

    dataset = datasets.MNIST(
        ROOT / "data",
        train=False,
        download=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((mnist.mean,), (mnist.std,))]),
    )
    images, _ = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert images.shape == (8, 1, 28, 28)
    model = ah.Autoencoder((32, 2)).eval()
    with torch.no_grad():
        assert torch.equal(model.encode(images), model.encode(images.flatten(1)))
        assert torch.equal(model(images), model(images.flatten(1)))
        assert torch.allclose(model(images), model(mnist.test_images[:8]), atol=1e-5)  # the same pixels
        assert model(images).shape == (8, 784)


def test_images_without_a_channel_axis_are_taken_as_well(mnist):
    # (N, 28, 28) is how torchvision's MNIST stores its images (dataset.data)
    model = ah.Autoencoder((32, 2)).eval()
    flat = mnist.test_images[:4]
    with torch.no_grad():
        assert torch.equal(model(flat.reshape(4, 28, 28)), model(flat))


@pytest.mark.parametrize("shape", [(4, 783), (4, 2, 28, 28), (4, 28, 29), (784,)])
def test_images_of_the_wrong_size_are_refused_with_the_shapes_it_takes(shape):
    with pytest.raises(ValueError, match=r"shaped \(N, 784\) or \(N, 1, 28, 28\); got shape"):
        ah.Autoencoder((32, 2))(torch.zeros(shape))


@pytest.mark.parametrize("activation", sorted(ah.ACTIVATIONS))
def test_every_hidden_layer_of_encoder_and_decoder_uses_the_chosen_activation(activation):
    model = ah.Autoencoder((64, 32, 2), activation)
    chosen = ah.ACTIVATIONS[activation]
    assert [type(m) for m in model.encoder] == [nn.Linear, chosen, nn.Linear, chosen, nn.Linear]
    assert [type(m) for m in model.decoder] == [nn.Linear, chosen, nn.Linear, chosen, nn.Linear]


@pytest.mark.parametrize("sizes", [(), (0, 2), (100, -2), (100, 2.5), "100,2", (True, 2), None])
def test_bad_layer_sizes(sizes):
    with pytest.raises(ValueError, match="layer_sizes must be a non-empty list of positive integers"):
        ah.RunConfig(layer_sizes=sizes)


def test_a_layer_of_one_unit_is_a_valid_size():
    # a 1-D code is a legitimate bottleneck: "positive" means > 0, not > 1
    model = ah.Autoencoder((16, 1))
    assert model.latent_dim == 1 and model(torch.zeros(3, 784)).shape == (3, 784)


def test_the_model_refuses_an_unknown_activation_naming_it_and_the_choices():
    # the model checks on its own, also when built without a RunConfig, with the config's own check and words
    with pytest.raises(
        ValueError, match=r"^unknown activation 'swish'; choose one of relu, sigmoid, tanh, leaky_relu\.$"
    ):
        ah.Autoencoder((16, 2), activation="swish")


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("activation", "swish", "unknown activation 'swish'; choose one of relu, sigmoid, tanh, leaky_relu"),
        (
            "optimizer",
            "lbfgs",
            "unknown optimizer 'lbfgs'; choose one of adam, adamw, sgd, sgd_momentum, rmsprop, rprop",
        ),
        ("loss", "bce", "unknown loss 'bce'; choose one of mse, l1"),
        ("schedule", "step", "unknown schedule 'step'; choose one of constant, cosine"),
        ("lr", 0, "lr must be a positive number"),
        ("lr", -1e-3, "lr must be a positive number"),
        ("lr", float("nan"), "lr must be a positive number"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("batch_size", 12.5, "batch_size must be a positive integer"),
        ("lr", float("inf"), "lr must be a positive number"),
        ("lr", True, "lr must be a positive number"),
        ("lr", "0.1", "lr must be a positive number"),
        ("batch_size", True, "batch_size must be a positive integer"),
        ("track_every", 0, "track_every must be a positive integer"),
        ("input_dim", -784, "input_dim must be a positive integer"),
        ("epochs", -1, "epochs must be an integer >= 0"),
        ("epochs", 2.5, "epochs must be an integer >= 0"),
        ("seed", True, "seed must be an integer >= 0"),
        ("val_size", -1, "val_size must be an integer >= 0"),
        ("train_subset", "all", "train_subset must be an integer >= 0"),
        ("weight_decay", -1e-4, "weight_decay must be a number >= 0, got -0.0001"),
        ("momentum", -0.9, "momentum must be a number >= 0, got -0.9"),
        ("weight_decay", "0.05", "weight_decay must be a number >= 0"),
        ("momentum", float("inf"), "momentum must be a number >= 0"),
        ("weight_decay", True, "weight_decay must be a number >= 0"),
        ("layer_sizes", (), r"layer_sizes must be a non-empty list of positive integers"),
        ("ema", True, r"ema must be a decay in \[0, 1\)"),
        ("ema", "0.999", r"ema must be a decay in \[0, 1\)"),
        ("noise", True, "noise must be a standard deviation >= 0"),
        ("noise", "0.5", "noise must be a standard deviation >= 0"),
        ("noise", float("inf"), "noise must be a standard deviation >= 0"),
        ("ema", 1.0, r"ema must be a decay in \[0, 1\)"),
        ("ema", -0.5, r"ema must be a decay in \[0, 1\)"),
        ("noise", -0.1, "noise must be a standard deviation >= 0"),
        ("noise", float("nan"), "noise must be a standard deviation >= 0"),
    ],
)
def test_bad_config_values_name_the_field_and_choices(field, value, words):
    with pytest.raises(ValueError, match="^" + words):  # the message opens with the field's name
        ah.RunConfig(**{field: value})


def test_the_edges_of_each_valid_range_are_accepted():
    # ">= 0" means 0 is valid, "[0, 1)" takes 0 and 0.9999, "positive" takes the smallest such value.
    edges = dict(epochs=0, seed=0, val_size=0, train_subset=0, weight_decay=0, momentum=0, ema=0, noise=0)
    assert ah.RunConfig(**edges).to_dict().items() >= edges.items()
    assert ah.RunConfig(ema=0.9999, noise=1e9, lr=1e-12, batch_size=1, track_every=1, input_dim=1).ema == 0.9999


def test_config_round_trips_through_json_dict():
    config = ah.RunConfig(layer_sizes=[500, 200, 2], lr=1e-3)
    assert ah.RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config fields"):
        ah.RunConfig.from_dict({**config.to_dict(), "dropout": 0.5})


def test_devices():
    assert ah.resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="choose 'auto', 'cpu', 'cuda' or 'mps'"):
        ah.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ah.resolve_device("cuda")


MPS_AVAILABLE = plumbing._mps_available  # the real one: conftest replaces it in every test ("auto" means the CPU)


def test_apple_mps_is_asked_of_torch_and_an_old_torch_without_it_means_none(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert MPS_AVAILABLE() is True
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert MPS_AVAILABLE() is False
    # torch.backends imports a missing submodule on first use, so deleting `mps` would not hide it: an old torch
    # is one whose torch.backends has no `mps` at all
    monkeypatch.setattr(torch, "backends", types.SimpleNamespace())
    assert MPS_AVAILABLE() is False


def test_an_unknown_optimizer_is_refused_not_replaced():
    config = ah.RunConfig()
    config.optimizer = "lbfgs"  # set after validation: make_optimizer must still refuse it
    with pytest.raises(
        ValueError, match=re.escape(f"unknown optimizer 'lbfgs'; choose one of {', '.join(ah.OPTIMIZERS)}.")
    ):
        ah.make_optimizer(ah.Autoencoder((8, 2)), config)


OPTIMIZER_CLASSES = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "sgd_momentum": "SGD",
    "rmsprop": "RMSprop",
    "rprop": "Rprop",
}


@pytest.mark.parametrize("name", ah.OPTIMIZERS)
def test_each_optimizer_gets_the_configs_rate_decay_and_momentum(name):
    # What mutmut cannot mutate (a table of optimizers) is checked here: every option reaches the optimizer.
    decay = 0.0 if name == "rprop" else 0.045  # a config refuses weight decay with rprop (tested below)
    config = ah.RunConfig(optimizer=name, lr=0.0123, weight_decay=decay, momentum=0.7)
    optimizer = ah.make_optimizer(ah.Autoencoder((8, 2)), config)
    group = optimizer.param_groups[0]
    assert type(optimizer).__name__ == OPTIMIZER_CLASSES[name]
    assert group["lr"] == 0.0123
    assert group.get("weight_decay", 0.0) == decay
    assert group.get("momentum", 0.0) == (0.7 if name == "sgd_momentum" else 0.0)
    assert group.get("fused") or group.get("foreach")  # one kernel for all parameters
    assert len(group["params"]) == len(list(ah.Autoencoder((8, 2)).parameters()))


def test_the_schedule_a_config_names_is_the_one_its_optimizer_follows():
    model = ah.Autoencoder((8, 2))
    constant = ah.RunConfig(epochs=7)
    assert ah.make_schedule(ah.make_optimizer(model, constant), constant) is None
    cosine = constant.replace(schedule="cosine")
    schedule = ah.make_schedule(ah.make_optimizer(model, cosine), cosine)
    assert type(schedule).__name__ == "CosineAnnealingLR" and schedule.T_max == 7


@pytest.mark.parametrize(("name", "function"), [("mse", F.mse_loss), ("l1", F.l1_loss)])
def test_each_loss_name_is_its_function_in_training_and_evaluation(name, function):
    torch.manual_seed(0)
    model, images = ah.Autoencoder((8, 2)), torch.randn(30, 784)
    assert ah.LOSSES[name] is function
    with torch.no_grad():
        expected = function(model(images), images).item()
    assert ah.evaluate_loss(model, images, name, batch_size=7) == pytest.approx(expected, rel=1e-5)


def test_the_default_config_builds_the_assignments_network():
    assert ah.RunConfig().layer_sizes == ah.DEFAULT_LAYERS == (1000, 500, 250, 2)
    assert str(ah.build_model(ah.RunConfig())) == str(ah.Autoencoder())
    assert (ah.RunConfig().epochs, runs.MAIN_EPOCHS) == (150, 150)  # the main runs train the default epochs


def test_the_full_batch_run_takes_one_step_per_epoch(mnist):
    run = runs.load_run(ROOT / "default_layers/fullbatch_adam_lr5e-4")
    assert run.config.batch_size == ah.FULL_BATCH
    assert analyses.steps_run(run, len(mnist.train_images)) == run.metrics["epochs_run"]


def test_device_names_say_which_device_ran(monkeypatch):
    assert ah.device_name("cpu") == f"cpu ({torch.get_num_threads()} threads)"
    assert ah.device_name("mps") == "mps (Apple GPU)"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"the GPU of {device}")
    assert ah.device_name("cuda:1") == "the GPU of cuda:1"


@pytest.mark.parametrize("cuda, mps, auto", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_means_cuda_then_mps_then_the_cpu_and_each_is_refused_where_missing(monkeypatch, cuda, mps, auto):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(plumbing, "_mps_available", lambda: mps)
    assert ah.resolve_device() == ah.resolve_device("auto") == torch.device(auto)
    for name, present in (("cuda", cuda), ("mps", mps)):
        if present:
            assert ah.resolve_device(name) == torch.device(name)
        else:
            message = f"device '{name}' requested but {name.upper()} is not available here; use 'cpu' or 'auto'."
            with pytest.raises(ValueError, match=re.escape(message)):
                ah.resolve_device(name)
    with pytest.raises(ValueError, match=re.escape("device 'meta' is not supported; choose 'auto', 'cpu', 'cuda'")):
        ah.resolve_device("meta")
    with pytest.raises(ValueError, match=re.escape("unknown device 3.5; choose 'auto', 'cpu', 'cuda' or 'mps'.")):
        ah.resolve_device(3.5)


def test_the_input_size_is_part_of_the_config_and_rebuilds_the_model(tmp_path):
    config = ah.RunConfig(layer_sizes=(8, 2), input_dim=100, epochs=1)
    model = ah.build_model(config)
    history = {column: [1] for column in ah.HISTORY_COLUMNS}
    runs.save_run(ah.Run(config, model, history, {"test_mse": 1.0}, None, tmp_path / "runs/run"))  # parent made too
    loaded = runs.load_run(tmp_path / "runs/run")
    assert loaded.config.input_dim == 100
    assert loaded.model.input_dim == 100
    x = torch.randn(3, 100)
    assert torch.equal(loaded.model(x), model(x))


def test_data_is_checked_by_its_normalized_flag_not_guessed_from_its_std(mnist):
    ah.check_data(ah.RunConfig(), dataclasses.replace(mnist, std=1.0))  # normalized data whose std happens to be 1
    with pytest.raises(ValueError, match="config.normalize=False but the data is normalized"):
        ah.check_data(ah.RunConfig(normalize=False), mnist)
    with pytest.raises(ValueError, match="config.normalize=True but the data is not normalized"):
        ah.check_data(ah.RunConfig(), dataclasses.replace(mnist, normalized=False))


def test_get_run_names_the_saved_runs_when_the_name_is_unknown():
    with pytest.raises(ValueError, match="no saved run named 'default_layers/nope'; choose one of: default_layers/"):
        runs.get_run("default_layers/nope")


def test_a_config_field_carries_its_default_help_and_choices():
    # RunConfig's fields are built at import; called here, the same helper is checked where a test can see it
    field = ah._option(3, "how many", ("a", "b"))
    assert field.default == 3 and dict(field.metadata) == {"help": "how many", "choices": ("a", "b")}
    assert dict(ah._option(0.5, "a rate").metadata) == {"help": "a rate", "choices": None}


def test_rprop_with_weight_decay_is_refused_not_silently_undecayed():
    with pytest.raises(ValueError, match="^weight_decay must be 0 with rprop"):
        ah.RunConfig(optimizer="rprop", weight_decay=0.01)
    assert ah.RunConfig(optimizer="rprop").weight_decay == 0.0


def test_a_config_changed_after_it_was_made_is_checked_again_by_validate():
    config = ah.RunConfig()
    config.layer_sizes = (0, 2)
    with pytest.raises(ValueError, match="^layer_sizes must be"):
        config.validate()
