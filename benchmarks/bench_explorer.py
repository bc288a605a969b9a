"""The latent explorer's kernel-side cost of one update (decode, neighbours, images, marker).

What one click or drag step costs in the kernel, with the canvas in the mode it has once a
browser is attached (image diffs only). The trip through JupyterLab and the browser comes on top:
the browser test measures the whole (test-artifacts/explorer_latency.json). Writes
benchmarks/explorer.json.

    python benchmarks/bench_explorer.py [--updates 200]
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import ae.explorer as ae_explorer  # noqa: E402
import ae_helpers as ah  # noqa: E402
from ae import runs  # noqa: E402
from bench_training import _cpu_name  # noqa: E402


def measure(explorer, updates):
    """Seconds per decode_at along a path across the plot, the marker blitted as during a drag."""
    explorer.fig.canvas.syncing_data_url = False  # as after the front end's "initialized" message
    explorer.fig.canvas.draw()  # the first full draw: the scatter behind the marker
    (x0, x1), (y0, y1) = explorer.ax.get_xlim(), explorer.ax.get_ylim()
    seconds = []
    for i in range(updates):
        f = i / max(updates - 1, 1)
        start = time.perf_counter()
        explorer.decode_at(x0 + f * (x1 - x0), y0 + (0.2 + 0.6 * f) * (y1 - y0))
        seconds.append(time.perf_counter() - start)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    explorer = ae_explorer.explore(ROOT / "default_layers/adam_lr5e-4", data=ah.load_mnist(ROOT / "data"))
    seconds = measure(explorer, args.updates)
    ms = sorted(1000 * s for s in seconds)
    result = {
        "update_ms": {
            "median": round(statistics.median(ms), 2),
            "p90": round(ms[int(0.9 * len(ms))], 2),
            "max": round(ms[-1], 2),
            "n": len(ms),
        },
        "machine": {
            "processor": _cpu_name(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    print(
        f"one explorer update in the kernel: median {result['update_ms']['median']} ms, "
        f"90th percentile {result['update_ms']['p90']} ms, max {result['update_ms']['max']} ms "
        f"({len(ms)} updates, {result['machine']['processor']}, {result['machine']['threads']} threads)"
    )
    out = ROOT / "benchmarks" / "explorer.json"
    runs.write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
