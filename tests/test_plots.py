"""Figures: valid, non-blank PNGs of sensible size; overlays pass through the tumour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vox2vox.data.synthetic import make_phantom
from vox2vox.report.plots import overlay_centre, save_overlay, save_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path)


def _corner_tumour(shape=(40, 36, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A bright image with a small label-1 blob far from the volume centre."""
    rng = np.random.default_rng(0)
    image = rng.uniform(50, 100, size=shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[4:9, 25:31, 2:6] = 1
    return image, labels


def _reddish(rgba: np.ndarray) -> np.ndarray:
    """Pixels tinted by the label-1 overlay colour (red over grey)."""
    r, g, b = rgba[..., 0], rgba[..., 1], rgba[..., 2]
    return (r - np.maximum(g, b)) > 0.25


def test_overlay_centre_prefers_truth_then_pred_then_middle() -> None:
    _, labels = _corner_tumour()
    assert overlay_centre(labels.shape, truth=labels, pred=None) == (6, 28, 4)
    other = np.zeros_like(labels)
    other[30, 5, 10] = 2
    assert overlay_centre(labels.shape, truth=labels, pred=other) == (6, 28, 4)
    assert overlay_centre(labels.shape, truth=np.zeros_like(labels), pred=other) == (30, 5, 10)
    assert overlay_centre(labels.shape, truth=None, pred=None) == (20, 18, 10)


def test_overlay_png_shows_the_tumour_in_every_view(tmp_path: Path) -> None:
    image, labels = _corner_tumour()
    out = tmp_path / "figs" / "case.png"
    save_overlay(out, image, truth=labels, pred=None, spacing=(1.0, 1.0, 2.5), title="case")
    rgba = _read_png(out)
    height, width = rgba.shape[:2]
    assert 200 < height < 2000 and 500 < width < 3000
    assert float(rgba[..., :3].std()) > 0.05  # not blank
    # Each of the three view columns (above the legend) contains overlay-coloured pixels, which
    # only happens if every slice passes through the off-centre blob.
    panels = _reddish(rgba[: int(height * 0.85)])
    thirds = np.array_split(panels, 3, axis=1)
    assert all(t.sum() > 10 for t in thirds)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_overlay_with_truth_and_prediction_has_two_rows(tmp_path: Path) -> None:
    image, label = make_phantom(shape=(32, 32, 32), rng=np.random.default_rng(1))
    pred = label.copy()
    pred[pred == 4] = 1
    one = tmp_path / "one.png"
    two = tmp_path / "two.png"
    save_overlay(one, image[3], truth=label, pred=None, label_names={1: "NCR", 2: "ED", 4: "ET"})
    save_overlay(two, image[3], truth=label, pred=pred)
    assert _read_png(two).shape[0] > 1.5 * _read_png(one).shape[0]
    save_overlay(tmp_path / "bare.png", image[3], truth=None, pred=None)
    assert float(_read_png(tmp_path / "bare.png")[..., :3].std()) > 0.05


def test_overlay_rejects_mismatched_shapes(tmp_path: Path) -> None:
    image, labels = _corner_tumour()
    with pytest.raises(ValueError, match="shape"):
        save_overlay(tmp_path / "x.png", image, truth=labels[:-1], pred=None)


def test_training_curves_tolerate_missing_keys(tmp_path: Path) -> None:
    log = [
        {"epoch": 1, "step": 10, "loss_g": 3.0, "loss_d": 0.4, "loss_adv": 0.5, "loss_dice": 0.5, "d_acc": 0.6},
        {"epoch": 2, "step": 20, "loss_g": 2.0, "loss_d": 0.3, "d_acc": 0.7, "val_dice": 0.5, "val_dice_WT": 0.6},
        {"epoch": 3, "step": 30, "loss_g": 1.5, "loss_dice": None, "d_acc": float("nan")},
        {"epoch": 4, "step": 40, "loss_g": 1.2, "val_dice": 0.7, "val_dice_WT": 0.8, "val_dice_ET": 0.5},
    ]
    out = tmp_path / "curves.png"
    save_training_curves(out, log)
    rgba = _read_png(out)
    assert rgba.shape[1] > 800 and float(rgba[..., :3].std()) > 0.05
    # Empty and loss-only logs still give a figure.
    save_training_curves(tmp_path / "empty.png", [])
    save_training_curves(tmp_path / "steps.png", [{"step": 1, "loss_g": 1.0}, {"step": 2, "loss_g": 0.5}])
    assert _read_png(tmp_path / "empty.png").shape[0] > 100
    assert _read_png(tmp_path / "steps.png").shape[0] > 100
