"""Helpers shared by the test modules: tiny networks for command-line training, small NIfTI cases,
a tiny model checkpoint, and the one-line user-error check.

Test modules import from here, never from each other.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from vox2vox.cli import main
from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.model.checkpoint import Checkpoint, save_checkpoint
from vox2vox.model.generator import Generator
from vox2vox.model.residual import build_generator

SHAPE = (16, 16, 16)

#: The tiny networks of every command-line training test: seconds on a CPU, not a model that learns much.
TINY_NETWORKS = {
    "generator.base_filters": "4",
    "generator.depth": "3",
    "generator.bottleneck_blocks": "1",
    "discriminator.base_filters": "4",
}


def tiny_overrides(settings: dict[str, str] | None = None) -> list[str]:
    """``--set key=value`` arguments: :data:`TINY_NETWORKS`, then ``settings`` (values as typed on
    the command line, e.g. ``{"train.patch_size": "[24,24,24]", "train.device": '"cpu"'}``)."""
    args: list[str] = []
    for key, value in {**TINY_NETWORKS, **(settings or {})}.items():
        args += ["--set", f"{key}={value}"]
    return args


#: ``vox2vox train`` with the paper's settings instead of a plan from the data (planning times real
#: networks and trains for a budget): what every fixed tiny training run of the tests starts from.
PAPER = ["--config", "paper"]

#: The bad-input tests' training settings: one epoch, no validation, no discriminator, on the CPU.
TINY_SETTINGS = tiny_overrides({
    "train.patch_size": "[24,24,24]", "train.batch_size": "1", "data.val_cases": "0", "train.epochs": "1",
    "loss.adversarial": "false", "train.device": '"cpu"',
})

#: The bad-input tests' training run (``train`` arguments): :data:`PAPER` with :data:`TINY_SETTINGS`.
TINY = [*PAPER, *TINY_SETTINGS]


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def ball(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy ball (image, float32) and its 0/1 label (uint8) on SHAPE."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(np.float32)
    r = np.sqrt(sum((g - 7.5) ** 2 for g in grid))
    image = np.where(r < 7, rng.normal(100.0, 10.0, SHAPE), 0.0).astype(np.float32)
    label = (r < 3 + seed % 2).astype(np.uint8)
    return image, label


def make_manifest(root: Path, *, n_cases: int = 2, channels: tuple[str, ...] = ("image",)) -> Path:
    """``root/manifest.csv`` (id,<channels>,label) over files ``root/<id>_<channel>.nii.gz``."""
    lines = [",".join(["id", *channels, "label"])]
    for i in range(n_cases):
        case_id = f"case_{i:03d}"
        image, label = ball(i)
        for c, name in enumerate(channels):
            save_nifti(root / f"{case_id}_{name}.nii.gz", image + c)
        save_nifti(root / f"{case_id}_seg.nii.gz", label)
        lines.append(",".join([case_id, *(f"{case_id}_{n}.nii.gz" for n in channels), f"{case_id}_seg.nii.gz"]))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def make_model(path: Path, *, in_channels: int = 1) -> Path:
    """A tiny untrained binary model checkpoint, with what training stores beside the weights."""
    config = Config.from_dict({
        "generator": {"in_channels": in_channels, "n_classes": 2, "base_filters": 4, "max_filters": 8, "depth": 3,
                      "bottleneck_blocks": 1},
        "discriminator": {"in_channels": in_channels, "n_classes": 2, "base_filters": 4, "max_filters": 8},
        "train": {"patch_size": [24, 24, 24]},
    })
    torch.manual_seed(0)
    generator = Generator(config.generator)
    state = {"channels": [f"c{i}" for i in range(in_channels)], "convention": get_convention("binary").to_json(),
             "layout": "manifest", "epoch": 1, "step": 1}
    save_checkpoint(path, Checkpoint(config=config.to_dict(), generator=generator.state_dict(), state=state))
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result: tuple[int, str, str], *needles: object) -> str:
    """Status 2, one stderr line holding every needle, no traceback; returns the line."""
    code, _, err = result
    # What a terminal shows: progress bars erase themselves with carriage returns (tqdm,
    # leave=False), so each newline-terminated line reads as its text after the last '\r'.
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


def assert_nothing_written(folder: Path) -> None:
    """The output folder does not exist or holds no file (no partial or temporary output)."""
    if folder.exists():
        leftovers = [p for p in folder.rglob("*") if p.is_file()]
        assert not leftovers, leftovers


def no_temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def tiny_brats_segmenter(path: Path, *, channel_dropout: float = 0.0) -> Path:
    """A tiny untrained BraTS segmenter on (t1, flair), saved at ``path``: for paths (filling a
    missing channel) that only need a segmentation model to run; ``channel_dropout`` as if trained with it."""
    config = Config.from_dict({
        "augment": {"channel_dropout": channel_dropout},
        "generator": {"in_channels": 2, "n_classes": 4, "base_filters": 4, "max_filters": 8, "depth": 3,
                      "bottleneck_blocks": 1},
        "discriminator": {"in_channels": 2, "n_classes": 4, "base_filters": 4, "max_filters": 8},
        "train": {"patch_size": [32, 32, 32]},
    })
    torch.manual_seed(1)
    state = {"channels": ["t1", "flair"], "convention": get_convention("brats").to_json(), "layout": "brats",
             "epoch": 1, "step": 1}
    save_checkpoint(path, Checkpoint(config=config.to_dict(), generator=build_generator(config.generator).state_dict(),
                                     state=state))
    return path


def translation_checkpoint(path: Path, *, source=("t1",), target=("flair",), prep=None, head="linear",
                           state=None, task=None, loss=None) -> Path:
    """A randomly initialised translation generator with what training stores beside it."""
    config = Config.from_dict({
        "task": {"kind": "translate", "source": list(source), "target": list(target), "head": head, **(task or {})},
        "loss": loss or {},
        "generator": {"in_channels": len(source), "n_classes": len(target), "output": head,
                      "base_filters": 4, "max_filters": 8, "depth": 3,
                      "bottleneck_blocks": 1},
        "discriminator": {"in_channels": len(source), "n_classes": len(target), "base_filters": 4, "max_filters": 8},
        "preprocess": prep or {"target_spacing": [1.25, 1.25, 1.25], "pad_multiple": 8},
        "train": {"patch_size": [32, 32, 32]},
    })
    torch.manual_seed(2)
    generator = build_generator(config.generator)
    with torch.no_grad():  # outputs of a few units, as a trained z-scored synthesis has
        last = [m for m in generator.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
        last.weight.mul_(4.0)
    state = {"channels": list(source), "layout": "brats", "epoch": 3, "step": 12, "best_score": -0.75,
             "best_epoch": 2, **(state or {})}
    save_checkpoint(path, Checkpoint(config=config.to_dict(), generator=generator.state_dict(), state=state))
    return path
