"""Seconds and peak memory to predict one volume with the paper-size generator on this machine.

Usage: ``python benchmarks/predict.py [--repeats 1] [--only whole,sliding,ct] [--threads N]``

Measurements (each in its own subprocess, so peak resident memory, ``ru_maxrss``, which also
counts what torch's CPU allocator and oneDNN take outside Python's view, never mixes):

- ``whole``: one 240x240x155 four-channel case (BraTS size) through
  :func:`vox2vox.infer.inference.predict_probabilities` in one pass (padded to 240x240x160), the default
  generator (~150 M parameters, random He-normal weights: speed does not depend on the values).
  The first pass is reported apart ("cold": oneDNN builds its kernels), then the median of
  ``--repeats`` further passes ("warm").
- ``whole-cl``: the same in the channels-last 3D memory format.
- ``whole-bf16``: the same under bfloat16 autocast on the CPU (fast where the CPU has
  avx512_bf16 or AMX; not in the default set).
- ``sliding``: the same case and network through MONAI's ``sliding_window_inference`` (128^3
  windows, overlap 0.5, Gaussian blending): the baseline.
- ``ct``: a 512x512x300 one-channel CT (two classes) by sliding window. All 196 windows go
  through MONAI's blending and its full-size output buffers, but only the first
  ``--ct-network-windows`` run the network (the rest reuse its last output): peak memory is that
  of a full run (buffers + one window's activations), and the full time is extrapolated from the
  per-window time, and printed as such.
- ``floor``: the network's FLOPs for the padded case (``torch.utils.flop_counter``, counted on
  the meta device) divided by the float32 matrix-multiply rate measured here (median of 4096^2
  ``torch.mm``), at the same thread count.

Prints one line per measurement and a JSON summary (``--json FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BRATS_SHAPE = (240, 240, 155)
CT_SHAPE = (512, 512, 300)


def _rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _child(kind: str, repeats: int, ct_network_windows: int) -> dict:
    """One measurement inside a fresh process; returns seconds and peak RSS."""
    import torch

    from vox2vox.infer.inference import InferenceConfig, predict_probabilities
    from vox2vox.model.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    if kind == "matmul":
        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        torch.mm(a, b)
        times = []
        for _ in range(7):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        return {"gflops": 2 * 4096**3 / statistics.median(times) / 1e9}
    if kind == "flops":
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            net = Generator(GeneratorConfig()).eval()
            x = torch.empty(1, 4, 240, 240, 160)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(x)
        params = sum(p.numel() for p in net.parameters())
        return {"flops": int(counter.get_total_flops()), "params": params}

    base_rss = _rss_gib()
    if kind == "ct":
        net = Generator(GeneratorConfig(in_channels=1, n_classes=2)).eval()
        image = torch.randn(1, *CT_SHAPE).numpy()
        calls = {"n": 0, "seconds": 0.0}
        last: dict[str, torch.Tensor] = {}
        real_forward = net.forward

        def forward(x: torch.Tensor, **kw: object) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] <= ct_network_windows:
                t = time.perf_counter()
                last["out"] = real_forward(x, **kw)
                calls["seconds"] += time.perf_counter() - t
            return last["out"].clone()

        net.forward = forward  # type: ignore[method-assign]
        config = InferenceConfig(mode="sliding", window=(128, 128, 128), overlap=0.5)
        t = time.perf_counter()
        predict_probabilities([net], image, config=config)
        total = time.perf_counter() - t
        per_window = calls["seconds"] / min(ct_network_windows, calls["n"])
        overhead = total - calls["seconds"]
        return {
            "windows": calls["n"],
            "network_windows": min(ct_network_windows, calls["n"]),
            "seconds_per_window": per_window,
            "blending_seconds": overhead,
            "extrapolated_seconds": overhead + per_window * calls["n"],
            "peak_rss_gib": _rss_gib(),
            "baseline_rss_gib": base_rss,
        }

    net = Generator(GeneratorConfig()).eval()
    image = torch.randn(4, *BRATS_SHAPE).numpy()
    mode = "sliding" if kind == "sliding" else "whole"
    config = InferenceConfig(mode=mode, window=(128, 128, 128), overlap=0.5, channels_last=kind == "whole-cl",
                             amp="bf16" if kind == "whole-bf16" else "off")
    if kind == "whole-cl":
        net = net.to(memory_format=torch.channels_last_3d)
    t = time.perf_counter()
    probs = predict_probabilities([net], image, config=config)
    cold = time.perf_counter() - t
    assert probs.shape == (4, *BRATS_SHAPE)
    del probs
    warm = []
    if kind != "sliding":  # the sliding baseline is already ~18 warm passes of a 128^3 window
        for _ in range(repeats):
            t = time.perf_counter()
            probs = predict_probabilities([net], image, config=config)
            warm.append(time.perf_counter() - t)
            del probs
    return {
        "cold_seconds": cold,
        "warm_seconds": statistics.median(warm) if warm else None,
        "warm_all": warm,
        "peak_rss_gib": _rss_gib(),
        "baseline_rss_gib": base_rss,
    }


def _measure(kind: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--repeats", str(args.repeats),
           "--ct-network-windows", str(args.ct_network_windows)]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind}: child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="warm whole-volume passes after the cold one")
    parser.add_argument("--only", default="whole,whole-cl,sliding,ct",
                        help="comma-separated subset of whole, whole-cl, whole-bf16, sliding, ct")
    parser.add_argument("--ct-network-windows", type=int, default=2,
                        help="CT windows that run the network (the rest reuse its output)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the children (0: torch's default)")
    parser.add_argument("--json", default=None, help="also write the summary here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.repeats, args.ct_network_windows)))
        return 0

    load = os.getloadavg()
    print(f"cpu count {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    results: dict[str, dict] = {"load_before": {"1min": load[0]}}
    flops = _measure("flops", args)
    rate = _measure("matmul", args)
    floor = flops["flops"] / (rate["gflops"] * 1e9)
    results["floor"] = {**flops, **rate, "seconds": floor}
    print(f"floor: {flops['flops'] / 1e12:.2f} TFLOP ({flops['params'] / 1e6:.1f} M parameters) / "
          f"{rate['gflops']:.1f} GFLOP/s float32 matmul = {floor:.1f} s", flush=True)
    for kind in [k.strip() for k in args.only.split(",") if k.strip()]:
        r = _measure(kind, args)
        results[kind] = r
        if kind == "ct":
            print(f"ct 512x512x300 sliding: {r['windows']} windows, {r['seconds_per_window']:.1f} s per window "
                  f"(network, {r['network_windows']} measured), blending {r['blending_seconds']:.1f} s, "
                  f"extrapolated {r['extrapolated_seconds'] / 60:.1f} min; peak RSS {r['peak_rss_gib']:.2f} GiB",
                  flush=True)
            continue
        warm = r["warm_seconds"]
        best = warm if warm is not None else r["cold_seconds"]
        warm_text = f", warm {warm:.1f} s" if warm is not None else ""
        print(f"{kind}: cold {r['cold_seconds']:.1f} s{warm_text} ({best / floor:.2f}x floor); "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    if "sliding" in results:
        for kind in ("whole", "whole-cl", "whole-bf16"):
            if kind in results:
                w = results[kind]["warm_seconds"] or results[kind]["cold_seconds"]
                print(f"sliding / {kind}: {results['sliding']['cold_seconds'] / w:.2f}x")
    load = os.getloadavg()
    results["load_after"] = {"1min": load[0]}
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
