"""Training throughput: the original DataLoader pipeline (A) against this project's path (B).

Measured in one run on one machine, interleaved and repeated so that noise
shows, plus the machine's matrix-multiply throughput and the roofline it
implies for this model. Prints a table and writes benchmarks/results.json.

    python benchmarks/bench_training.py [--rounds 3] [--steps 60]
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import ae_helpers as ah  # noqa: E402
from ae import runs  # noqa: E402

BATCH = 128


def flop_per_sample(model):
    """Matrix-multiply FLOP for one sample's forward and backward pass.

    Forward and weight gradients cost 2*in*out each per Linear layer; input
    gradients too, except for the first layer (its input needs none).
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.in_features * m.out_features for m in linears)
    return 2 * weights * 3 - 2 * linears[0].in_features * linears[0].out_features


def gemm_flops(dtype, n=4096, repeats=5):
    """Best-of-``repeats`` FLOP/s of an n x n matrix multiply."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def pipeline_a(steps):
    """The original: torchvision dataset, per-sample ToTensor + Normalize, DataLoader with 4 workers."""
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(
        str(ROOT / "data"),
        train=True,
        download=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=4)
    torch.manual_seed(0)
    model = ah.Autoencoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    batches = iter(loader)
    for _ in range(5):  # warm-up: workers started, allocator warm
        _step_a(model, optimizer, next(batches))
    t0 = time.perf_counter()
    for _ in range(steps):
        _step_a(model, optimizer, next(batches))
    return steps * BATCH / (time.perf_counter() - t0)


def _step_a(model, optimizer, batch):
    images = batch[0].view(-1, 784)
    loss = F.mse_loss(model(images), images)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def pipeline_b(steps, data, bf16=False, compile=False):
    """This project: in-memory tensors, index-sliced batches, fused Adam: ah.train_epoch itself.

    ``compile=True`` runs the model through torch.compile (forward and backward
    fused by Inductor; compilation happens in the warm-up steps, not timed).
    """
    torch.manual_seed(0)
    model = ah.Autoencoder()
    optimizer = ah.make_optimizer(model, ah.RunConfig())
    if compile:
        model = torch.compile(model)
    images = data.train_images[: (steps + 5) * BATCH]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    ah.train_epoch(model, optimizer, images, order[: 5 * BATCH], BATCH, bf16=bf16)
    t0 = time.perf_counter()
    total = ah.train_epoch(model, optimizer, images, order[5 * BATCH :], BATCH, bf16=bf16)
    total.item()
    return steps * BATCH / (time.perf_counter() - t0)


def optimizer_step_seconds(repeats=50):
    """Time of one fused Adam step on the default model's parameters (gradients already there).

    It reads and writes every parameter and its two moment buffers, so it costs
    the same at any batch size and in either precision: a floor under the
    time of each training step.
    """
    model = ah.Autoencoder()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = ah.make_optimizer(model, ah.RunConfig())
    for _ in range(5):
        optimizer.step()
    return min(_timed(optimizer.step) for _ in range(repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    data = ah.load_mnist(ROOT / "data")
    fps = flop_per_sample(ah.Autoencoder())
    gemm = {"float32": gemm_flops(torch.float32), "bfloat16": gemm_flops(torch.bfloat16)}
    adam = optimizer_step_seconds()
    samples = {"A": [], "B": [], "B_bf16": [], "B_compiled": []}
    for r in range(args.rounds):
        samples["A"].append(pipeline_a(args.steps))
        samples["B"].append(pipeline_b(args.steps, data))
        samples["B_bf16"].append(pipeline_b(args.steps, data, bf16=True))
        samples["B_compiled"].append(pipeline_b(args.steps, data, compile=True))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in samples.items()), flush=True)
    median = {k: statistics.median(v) for k, v in samples.items()}
    roofline = {k: g / fps for k, g in gemm.items()}
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "batch_size": BATCH,
        "steps_per_measurement": args.steps,
        "rounds": args.rounds,
        "flop_per_sample": fps,
        "gemm_gflops": {k: round(v / 1e9, 1) for k, v in gemm.items()},
        "roofline_samples_per_s": {k: round(v) for k, v in roofline.items()},
        "samples_per_s": {
            k: {"median": round(median[k]), "min": round(min(v)), "max": round(max(v)), "all": [round(x) for x in v]}
            for k, v in samples.items()
        },
        "ratio_B_over_A": round(median["B"] / median["A"], 2),
        "ratio_B_bf16_over_A": round(median["B_bf16"] / median["A"], 2),
        "B_percent_of_fp32_roofline": round(100 * median["B"] / roofline["float32"], 1),
        "B_bf16_percent_of_bf16_roofline": round(100 * median["B_bf16"] / roofline["bfloat16"], 1),
        "ratio_B_compiled_over_B": round(median["B_compiled"] / median["B"], 3),
        # The step's floor without any matrix multiply: the optimizer alone, and the rate it allows.
        "adam_step_ms": round(1e3 * adam, 2),
        "adam_step_share_of_B_step": round(adam / (BATCH / median["B"]), 3),
        "adam_step_share_of_B_bf16_step": round(adam / (BATCH / median["B_bf16"]), 3),
    }
    _report(result)
    out = ROOT / "benchmarks" / "results.json"
    runs.write_json(out, result)
    print(f"wrote {out.relative_to(ROOT)}")


def _report(result):
    print(f"\nFLOP per sample (forward + backward): {result['flop_per_sample'] / 1e6:.2f} M")
    gemm = result["gemm_gflops"]
    print(f"GEMM: float32 {gemm['float32']} GFLOP/s, bfloat16 {gemm['bfloat16']} GFLOP/s")
    for k, v in result["samples_per_s"].items():
        print(f"{k:7s} {v['median']:>8,} samples/s (min {v['min']:,}, max {v['max']:,})")
    print(
        f"B/A = {result['ratio_B_over_A']}, B_bf16/A = {result['ratio_B_bf16_over_A']}, "
        f"B_compiled/B = {result['ratio_B_compiled_over_B']}"
    )
    print(
        f"fused Adam step alone: {result['adam_step_ms']} ms = {100 * result['adam_step_share_of_B_step']:.0f}% "
        f"of B's step, {100 * result['adam_step_share_of_B_bf16_step']:.0f}% of B_bf16's"
    )
    print(
        f"B = {result['B_percent_of_fp32_roofline']}% of the float32 roofline "
        f"({result['roofline_samples_per_s']['float32']:,} samples/s)"
    )


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
