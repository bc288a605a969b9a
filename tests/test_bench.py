"""The benchmark's roofline arithmetic, checked against PyTorch's own FLOP counter."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import ae.explorer as ae_explorer
import ae_helpers as ah
import bench_training
from ae import runs


def test_flop_per_sample_matches_pytorch_flop_counter():
    model = ah.Autoencoder()
    batch = torch.randn(4, 784)
    with FlopCounterMode(display=False) as counter:
        loss = F.mse_loss(model(batch), batch)
        loss.backward()
    assert bench_training.flop_per_sample(model) * len(batch) == counter.get_total_flops()


def test_project_path_trains_the_same_as_the_training_loop(mnist):
    # the benchmark's B path is ah.train_epoch: one epoch of it equals train()'s first epoch
    config = ah.RunConfig(layer_sizes=(32, 2), epochs=1, train_subset=1000, batch_size=100)
    run = runs.train_run(config, mnist, progress=False)
    torch.manual_seed(config.seed)
    model = ah.Autoencoder(config.layer_sizes)
    train_idx, _ = ah.split_indices()
    images = mnist.train_images[train_idx[:1000]]
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(ah.epoch_seed(config.seed, 1)))
    total = ah.train_epoch(model, ah.make_optimizer(model, config), images, order, 100)
    assert total.item() / 1000 == run.history["train_loss"][0]


def test_compiled_path_learns_the_same_as_eager(mnist):
    # torch.compile must not change what is learned: same start, same batches, same losses (to float noise)
    images = mnist.train_images[:512]
    order = torch.arange(512)
    losses = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = ah.Autoencoder((64, 2))
        optimizer = ah.make_optimizer(model, ah.RunConfig())
        forward = torch.compile(model) if compile else model
        losses.append([ah.train_epoch(forward, optimizer, images, order, 128).item() / 512 for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert losses[0][2] < losses[0][0]


def test_the_explorer_benchmark_times_one_blitted_update_per_point(mnist, monkeypatch):
    import bench_explorer

    torch.manual_seed(0)
    images, labels = mnist.test_images[:300], mnist.test_labels[:300]
    explorer = ae_explorer.LatentExplorer(ah.Autoencoder((32, 2)), images, labels, mnist)
    decode_at, points = explorer.decode_at, []
    monkeypatch.setattr(explorer, "decode_at", lambda x, y: points.append((x, y)) or decode_at(x, y))
    seconds = bench_explorer.measure(explorer, 7)
    assert len(seconds) == 7
    assert all(s > 0 for s in seconds)
    assert len(set(points)) == 7
    assert explorer._background is not None  # the marker was blitted, not redrawn
