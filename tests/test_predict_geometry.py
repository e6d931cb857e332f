"""A prediction lies exactly on its input: same shape, affine and orientation (LPS, RAS, PSR).

Two kinds of check: a real (random-weight) checkpoint through ``read_model`` and
``predict_dataset`` / ``vox2vox predict`` (shape, affine, axis codes, integer dtype), and a
threshold "network" whose prediction is known voxel by voxel (class 1 where the input exceeds a
value), which shows the labels are not only on the right grid but at the right voxels.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from vox2vox.cli import main
from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.infer.inference import predict_dataset, read_model
from vox2vox.infer.loaded import LoadedModel
from vox2vox.infer.options import PredictionOptions
from vox2vox.model.checkpoint import Checkpoint, save_checkpoint
from vox2vox.model.generator import Generator
from vox2vox.model.record import ModelRecord

SPINE_T2 = Path("mri-spinalcord") / "t2" / "t2.nii.gz"


def save_tiny_checkpoint(path: Path) -> Path:
    """A random-weight 1-channel, 2-class checkpoint with the state keys training stores."""
    config = Config().with_overrides([
        "generator.in_channels=1", "generator.n_classes=2", "generator.base_filters=4",
        "generator.max_filters=8", "generator.depth=2", "generator.bottleneck_blocks=1",
        "preprocess.pad_multiple=4",
    ])
    torch.manual_seed(0)
    state = {"channels": ["image"], "layout": "single", "convention": get_convention("binary").to_json()}
    generator = Generator(config.generator).state_dict()
    save_checkpoint(path, Checkpoint(config=config.to_dict(), generator=generator, state=state))
    return path


def affine_for(codes: str) -> np.ndarray:
    """An anisotropic affine with axis codes ``codes`` ("RAS" or "LPS") and a shifted origin."""
    signs = {"RAS": [1, 1, 1], "LPS": [-1, -1, 1]}[codes]
    affine = np.diag([s * v for s, v in zip(signs, (0.9, 1.1, 2.5), strict=True)] + [1.0])
    affine[:3, 3] = [12.0, -30.0, 7.5]
    return affine


def write_image(path: Path, codes: str, shape=(18, 14, 9)) -> Path:
    rng = np.random.default_rng(3)
    data = rng.normal(50, 10, size=shape).astype(np.float32)
    data[:4] += 40  # asymmetric along x, so a flipped output could not pass by chance
    nib.save(nib.Nifti1Image(data, affine_for(codes)), path)
    return path


def assert_same_grid(pred: Path, ref: Path) -> None:
    out, src = nib.load(pred), nib.load(ref)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    assert np.issubdtype(out.get_data_dtype(), np.integer)


@pytest.mark.parametrize("codes", ["RAS", "LPS"])
def test_prediction_grid_equals_input_grid(tmp_path, codes):
    image = write_image(tmp_path / f"case_{codes}.nii.gz", codes)
    model = read_model(save_tiny_checkpoint(tmp_path / "m.safetensors"))
    report = predict_dataset([model], image, tmp_path / "pred", PredictionOptions(progress=False))
    assert not report.failed
    assert_same_grid(report.written[f"case_{codes}"], image)


def test_spinal_cord_psr_prediction_through_the_cli(tmp_path, shared_data):
    t2 = shared_data / SPINE_T2
    assert "".join(nib.aff2axcodes(nib.load(t2).affine)) == "PSR"
    run = tmp_path / "run" / "checkpoints"
    save_tiny_checkpoint(run / "best.safetensors")
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(tmp_path / "run"), "--input", str(t2), "--output", str(out),
                 "--device", "cpu", "--save-probabilities", "nifti", "--no-progress"])
    assert code == 0
    assert_same_grid(out / "t2.nii.gz", t2)
    probs = nib.load(out / "t2_probs.nii.gz")
    assert probs.shape == (*nib.load(t2).shape, 2)
    np.testing.assert_allclose(probs.affine, nib.load(t2).affine, atol=1e-5)


class ThresholdNet(torch.nn.Module):
    """Class 1 where channel 0 exceeds ``threshold``: a prediction known voxel by voxel."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

        class _Cfg:
            size_multiple = 4

        self.config = _Cfg()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = (x[:, :1] - self.threshold) * 1e4
        return torch.softmax(torch.cat([torch.zeros_like(logit), logit], dim=1), dim=1)


def threshold_model(threshold: float) -> LoadedModel:
    # No intensity normalisation and no crop: the network sees the raw values (in canonical
    # orientation, padded), so the expected labels are a threshold of the file's own array.
    config = Config().with_overrides(['preprocess.normalize="none"', "preprocess.crop_foreground=false",
                                      "preprocess.pad_multiple=4", "generator.in_channels=1",
                                      "generator.n_classes=2"])
    state = {"channels": ["image"], "convention": get_convention("binary").to_json()}
    return LoadedModel(ThresholdNet(threshold), config, ModelRecord.from_json(state, "threshold"), Path("threshold"))  # type: ignore[arg-type]


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PSR"])
def test_labels_land_on_the_right_voxels(tmp_path, shared_data, codes):
    source = shared_data / SPINE_T2 if codes == "PSR" else write_image(tmp_path / "img.nii.gz", codes)
    data = np.asarray(nib.load(source).dataobj, dtype=np.float32)
    threshold = float(np.median(data))
    report = predict_dataset([threshold_model(threshold)], source, tmp_path / "pred", PredictionOptions(progress=False))
    (written,) = report.written.values()
    got = np.asarray(nib.load(written).dataobj)
    np.testing.assert_array_equal(got, (data > threshold).astype(got.dtype))
    assert_same_grid(written, source)
