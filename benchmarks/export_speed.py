"""ONNX Runtime (and TorchScript) against PyTorch: seconds and peak memory per BraTS-size case.

Usage: ``python benchmarks/export_speed.py [--archs residual,paper] [--backends pytorch,onnx]
[--rounds 2] [--threads 1] [--json FILE]``

For each generator a random-weight checkpoint is written and exported with ``vox2vox export``
(the library's own code path). Then each backend runs in its own subprocess, so peak resident
memory (``ru_maxrss`` of that process: Python, torch's allocator, oneDNN, ONNX Runtime's arena)
never mixes between backends; the backends alternate within each round, in reverse order every
other round, so a change of load on a shared machine falls on all of them. A child loads the
model (timed), then predicts one 240x240x155 four-channel case (BraTS size; padded to
240x240x160) through :func:`vox2vox.infer.inference.predict_probabilities` twice: ``cold``
(first pass: kernels are built, memory is mapped) and ``warm``.

Generators: ``residual`` is what ``vox2vox plan`` picks for a 30-minute CPU budget (MONAI
residual U-Net, widths 8-128, depth 4); ``paper`` is the authors' generator (64-512 filters,
depth 4, 4 bottleneck blocks, ~150 M parameters). Each child also saves its label map, every 7th
probability and the gap between the two largest probabilities per voxel, and the parent reports
how far each backend is from PyTorch on the full case: voxels whose label differs, the largest
probability difference, and the largest PyTorch top-2 gap at a differing voxel (a tie broken the
other way has a gap about as small as the probability difference).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = (240, 240, 155)
ARCHS = {
    "residual": {"arch": "residual", "base_filters": 8, "max_filters": 128, "depth": 4, "dropout": 0.0},
    "paper": {"arch": "paper"},
}
SUFFIX = {"pytorch": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}


def _child(model: str, threads: int, out: str) -> dict:
    import numpy as np
    import torch

    from vox2vox.infer.inference import InferenceConfig, predict_probabilities, read_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = read_model(model)
    load_s = time.perf_counter() - t0
    image = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(0)).numpy()
    seconds = []
    probs = None
    for _ in range(2):
        del probs
        t0 = time.perf_counter()
        probs = predict_probabilities([loaded.generator], image, config=InferenceConfig(mode="whole"))
        seconds.append(time.perf_counter() - t0)
    np.save(out + "_labels.npy", probs.argmax(0).astype(np.uint8))
    top2 = np.sort(probs, axis=0)[-2:]
    np.save(out + "_margin.npy", (top2[1] - top2[0]).astype(np.float32))
    np.save(out + "_probs.npy", probs.reshape(probs.shape[0], -1)[:, ::7])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"load_s": load_s, "cold_s": seconds[0], "warm_s": seconds[1], "peak_rss_gib": rss}


def _prepare(arch: str, folder: Path, backends: list[str]) -> dict[str, Path]:
    import torch

    from vox2vox.config import Config
    from vox2vox.data.labels import get_convention
    from vox2vox.infer.export import export_model
    from vox2vox.model.checkpoint import Checkpoint, save_checkpoint
    from vox2vox.model.residual import build_generator

    config = Config.from_dict({"generator": {"in_channels": 4, "n_classes": 4, **ARCHS[arch]},
                               "discriminator": {"in_channels": 4, "n_classes": 4}})
    torch.manual_seed(0)
    generator = build_generator(config.generator)
    state = {"channels": ["t1", "t1ce", "t2", "flair"], "convention": get_convention("brats").to_json(),
             "layout": "brats"}
    ckpt = folder / f"{arch}.safetensors"
    save_checkpoint(ckpt, Checkpoint(config=config.to_dict(), generator=generator.state_dict(), state=state))
    paths = {"pytorch": ckpt}
    for backend in backends:
        if backend != "pytorch":
            t0 = time.perf_counter()
            result = export_model(ckpt, folder / f"{arch}{SUFFIX[backend]}")
            print(f"{arch}: exported {backend} in {time.perf_counter() - t0:.1f} s "
                  f"({result.path.stat().st_size / 2**20:.0f} MiB, {result.parameters:,} parameters)", flush=True)
            paths[backend] = result.path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="residual,paper")
    parser.add_argument("--backends", default="pytorch,onnx")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and ONNX Runtime alike")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.threads, args.out)))
        return
    import numpy as np

    backends = args.backends.split(",")
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for arch in args.archs.split(","):
            paths = _prepare(arch, folder, backends)
            for r in range(args.rounds):
                order = backends if r % 2 == 0 else backends[::-1]
                for backend in order:
                    out = str(folder / f"{arch}_{backend}_{r}")
                    done = subprocess.run([sys.executable, __file__, "--child", str(paths[backend]), "--out", out,
                                           "--threads", str(args.threads)], capture_output=True, text=True, env=env)
                    if done.returncode != 0:
                        raise SystemExit(f"{arch}/{backend} failed:\n{done.stderr[-3000:]}")
                    row = {"arch": arch, "backend": backend, "round": r, **json.loads(done.stdout.splitlines()[-1])}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                # Against the PyTorch child of the same round, on the whole case.
                ref = str(folder / f"{arch}_pytorch_{r}")
                for row in rows:
                    if row["arch"] == arch and row["round"] == r and row["backend"] != "pytorch" and "pytorch" in backends:
                        out = str(folder / f"{arch}_{row['backend']}_{r}")
                        labels, ref_labels = np.load(out + "_labels.npy"), np.load(ref + "_labels.npy")
                        differ = labels != ref_labels
                        row["labels_differing"] = int(differ.sum())
                        # How close to a tie PyTorch's own probabilities were where the labels differ.
                        margin = np.load(ref + "_margin.npy")
                        row["max_margin_where_differing"] = float(margin[differ].max()) if differ.any() else None
                        row["max_prob_diff"] = float(np.abs(np.load(out + "_probs.npy") - np.load(ref + "_probs.npy")).max())
            for f in folder.glob(f"{arch}*"):
                f.unlink()
    print()
    print("| generator | backend | round | load s | cold s | warm s | peak RSS GiB | labels differing "
          "| max prob diff | max top-2 gap there |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        gap = row.get("max_margin_where_differing")
        diff = (f"{row['labels_differing']} | {row['max_prob_diff']:.1e} | {'-' if gap is None else f'{gap:.1e}'}"
                if "max_prob_diff" in row else "- | - | -")
        print(f"| {row['arch']} | {row['backend']} | {row['round']} | {row['load_s']:.1f} | {row['cold_s']:.1f} | "
              f"{row['warm_s']:.1f} | {row['peak_rss_gib']:.2f} | {diff} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
