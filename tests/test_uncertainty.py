"""``predict --save-uncertainty``: entropy and member spread maps on the input grid, per-case scores.

The formulas are checked on hand-made distributions and members; the maps' geometry on a real
PSR-oriented MRI; and that the scores mean something on a model trained for a few seconds on
phantom balls: its entropy is clearly higher on the same case with shuffled intensities.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import (
    PAPER,
    assert_user_error,
    ball,
    cli,
    make_manifest,
    make_model,
    save_nifti,
    tiny_overrides,
)
from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.infer.inference import predict_averaged, predict_dataset
from vox2vox.infer.loaded import LoadedModel
from vox2vox.infer.options import PredictionOptions
from vox2vox.infer.uncertainty import (
    UNCERTAINTY_CSV,
    normalised_entropy,
    read_uncertainty_csv,
    score_case,
    uncertainty_maps,
    write_uncertainty_csv,
)
from vox2vox.model.record import ModelRecord

SPINE_T2 = Path("mri-spinalcord") / "t2" / "t2.nii.gz"


class FixedNet(torch.nn.Module):
    """Predicts the same class distribution at every voxel."""

    def __init__(self, probs: list[float]):
        super().__init__()
        self.probs = torch.tensor(probs, dtype=torch.float32)

        class _Cfg:
            size_multiple = 4

        self.config = _Cfg()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], len(self.probs), *x.shape[2:])
        return self.probs.view(1, -1, 1, 1, 1).expand(shape).contiguous()


def test_entropy_is_normalised_to_0_1():
    probs = np.array([[1.0, 0.25, 0.5], [0.0, 0.25, 0.5], [0.0, 0.25, 0.0], [0.0, 0.25, 0.0]], np.float32)
    np.testing.assert_allclose(normalised_entropy(probs, axis=0), [0.0, 1.0, 0.5], atol=1e-6)
    assert normalised_entropy(np.full((2, 3), 0.5, np.float32), axis=0).max() == pytest.approx(1.0)


def test_spread_is_the_members_mutual_information():
    image = np.zeros((1, 4, 4, 4), np.float32)
    a, b = [0.9, 0.1], [0.2, 0.8]
    both = predict_averaged([FixedNet(a), FixedNet(b)], image, member_entropy=True)
    assert both.members == 2
    member_h = [-(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2) for p in (0.9, 0.2)]
    np.testing.assert_allclose(both.expected_entropy, np.mean(member_h), atol=1e-6)
    entropy, spread = uncertainty_maps(both.probabilities, both.expected_entropy)
    mean = 0.55
    h_mean = -(mean * math.log(mean) + (1 - mean) * math.log(1 - mean)) / math.log(2)
    np.testing.assert_allclose(entropy, h_mean, atol=1e-6)
    np.testing.assert_allclose(spread, h_mean - np.mean(member_h), atol=1e-6)
    assert spread.min() > 0.2  # members that disagree this much
    # Agreeing members: no spread; one member: none computed.
    same = predict_averaged([FixedNet(a), FixedNet(a)], image, member_entropy=True)
    assert np.abs(uncertainty_maps(same.probabilities, same.expected_entropy)[1]).max() < 1e-6
    assert predict_averaged([FixedNet(a)], image, member_entropy=True).expected_entropy is None


def _binary_entropy(q: float) -> float:
    return -(q * math.log(q) + (1 - q) * math.log(1 - q)) / math.log(2)


def test_region_models_get_the_mean_binary_entropy_of_their_sigmoids(tmp_path):
    # Independent sigmoids (they need not sum to 1): each region's binary entropy, averaged.
    sigmoids = np.array([[0.5, 1.0], [0.5, 0.0], [0.5, 1.0]], np.float32)
    np.testing.assert_allclose(normalised_entropy(sigmoids, axis=0, kind="regions"), [1.0, 0.0], atol=1e-6)
    image = np.zeros((1, 4, 4, 4), np.float32)
    a, b = [0.9, 0.5, 0.1], [0.6, 0.2, 0.3]
    both = predict_averaged([FixedNet(a), FixedNet(b)], image, member_entropy=True, output_kind="regions")
    members = [np.mean([_binary_entropy(q) for q in m]) for m in (a, b)]
    np.testing.assert_allclose(both.expected_entropy, np.mean(members), atol=1e-6)
    entropy, spread = uncertainty_maps(both.probabilities, both.expected_entropy, kind="regions")
    mean = np.mean([_binary_entropy((x + y) / 2) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(entropy, mean, atol=1e-6)
    np.testing.assert_allclose(spread, mean - np.mean(members), atol=1e-6)
    # Through predict: a region "model" (BraTS WT/TC/ET) writes the same value on the input grid.
    config = Config().with_overrides(['preprocess.normalize="none"', "preprocess.crop_foreground=false",
                                      "preprocess.pad_multiple=4", "generator.in_channels=1",
                                      "generator.n_classes=3", 'generator.output="regions"'])
    state = {"channels": ["image"], "convention": get_convention("brats").to_json()}
    model = LoadedModel(FixedNet(a), config, ModelRecord.from_json(state, "fixed"), Path("fixed"))  # type: ignore[arg-type]
    source = save_nifti(tmp_path / "case.nii.gz", np.ones((6, 5, 4), np.float32))
    report = predict_dataset([model], source, tmp_path / "pred", PredictionOptions(uncertainty=True, progress=False))
    written = np.asarray(nib.load(tmp_path / "pred" / "case_entropy.nii.gz").dataobj)
    assert written.shape == (6, 5, 4)
    np.testing.assert_allclose(written, np.mean([_binary_entropy(q) for q in a]), atol=1e-6)
    # WT 0.9, TC 0.5 (not above 0.5), ET 0.1: edema (2) everywhere, so all of it is foreground.
    assert report.uncertainty["case"].foreground_voxels == 6 * 5 * 4


def test_scores_and_their_csv_round_trip(tmp_path):
    entropy = np.zeros((4, 4, 4), np.float32)
    entropy[:2] = 0.5
    foreground = np.zeros((4, 4, 4), bool)
    foreground[0] = True
    scores = {"a": score_case(entropy, None, foreground, members=1),
              "b": score_case(entropy, entropy / 2, np.zeros_like(foreground), members=8)}
    assert scores["a"].entropy_mean == pytest.approx(0.25) and scores["a"].entropy_foreground == pytest.approx(0.5)
    assert math.isnan(scores["a"].spread_mean) and math.isnan(scores["b"].entropy_foreground)
    assert scores["b"].spread_mean == pytest.approx(0.125)
    path = write_uncertainty_csv(tmp_path / UNCERTAINTY_CSV, scores)
    back = read_uncertainty_csv(path)
    assert back.keys() == scores.keys() and back["b"].members == 8 and back["a"].foreground_voxels == 16
    assert back["a"].entropy_mean == pytest.approx(0.25) and math.isnan(back["a"].spread_foreground)


def test_maps_lie_on_the_input_grid(shared_data, tmp_path, capsys):
    source = shared_data / SPINE_T2  # PSR orientation, so a reoriented map could not pass
    model = make_model(tmp_path / "m.safetensors")
    out = tmp_path / "pred"
    code, stdout, err = cli(capsys, "predict", "--model", model, "--input", source, "--output", out,
                            "--save-uncertainty", "--tta", "--no-progress")
    assert code == 0, err
    assert f"uncertainty scores: {out / UNCERTAINTY_CSV}" in stdout
    reference = nib.load(source)
    maps = {}
    for kind in ("entropy", "spread"):
        img = nib.load(out / f"t2_{kind}.nii.gz")
        assert img.shape == reference.shape and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, reference.affine, atol=1e-5)
        assert nib.aff2axcodes(img.affine) == ("P", "S", "R")
        maps[kind] = np.asarray(img.dataobj)
        assert maps[kind].min() >= 0.0 and maps[kind].max() <= 1.0
    assert maps["entropy"].max() > 0.1 and maps["spread"].max() > 0.0  # an untrained net: unsure
    assert np.all(maps["spread"] <= maps["entropy"] + 1e-6)
    (row,) = read_uncertainty_csv(out / UNCERTAINTY_CSV).values()
    assert row.members == 8 and row.entropy_mean == pytest.approx(float(maps["entropy"].mean()), abs=1e-5)
    # Without TTA or an ensemble: one member, no spread map, empty spread cells.
    single = tmp_path / "single"
    assert cli(capsys, "predict", "--model", model, "--input", source, "--output", single,
               "--save-uncertainty", "--no-progress")[0] == 0
    assert (single / "t2_entropy.nii.gz").is_file() and not (single / "t2_spread.nii.gz").exists()
    (row,) = read_uncertainty_csv(single / UNCERTAINTY_CSV).values()
    assert row.members == 1 and math.isnan(row.spread_mean)


def test_a_damaged_uncertainty_table_stops_the_run_before_any_case(tmp_path, capsys):
    image = save_nifti(tmp_path / "case.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    out = tmp_path / "pred"
    out.mkdir()
    (out / UNCERTAINTY_CSV).write_text("case,members\nx,many\n")
    assert_user_error(cli(capsys, "predict", "--model", make_model(tmp_path / "m.safetensors"), "--input", image,
                          "--output", out, "--save-uncertainty", "--no-progress"),
                      out / UNCERTAINTY_CSV, "malformed uncertainty row")
    assert sorted(p.name for p in out.iterdir()) == [UNCERTAINTY_CSV]


@pytest.mark.slow
def test_a_trained_model_is_less_sure_of_shuffled_intensities(tmp_path, capsys):
    # Seconds of training on noisy phantom balls: Dice about 0.8 on a new ball.
    manifest = make_manifest(tmp_path / "data", n_cases=4)
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", run, *PAPER, *tiny_overrides({
        "train.patch_size": "[16,16,16]", "train.batch_size": "2", "data.val_cases": "0", "train.epochs": "30",
        "loss.adversarial": "false", "train.device": '"cpu"', "loss.lambda_ce": "1.0", "optim.lr_g": "0.002"}))
    assert code == 0, err
    image, label = ball(7)
    shuffled = np.random.default_rng(0).permutation(image.ravel()).reshape(image.shape)  # same histogram
    cases = tmp_path / "cases"
    save_nifti(cases / "clean.nii.gz", image)
    save_nifti(cases / "shuffled.nii.gz", shuffled)
    truth = tmp_path / "truth"
    save_nifti(truth / "clean.nii.gz", label)
    save_nifti(truth / "shuffled.nii.gz", label)
    out = tmp_path / "pred"
    for name in ("clean", "shuffled"):
        code, _, err = cli(capsys, "predict", "--model", run, "--input", cases / f"{name}.nii.gz", "--output", out,
                           "--save-uncertainty", "--no-progress")
        assert code == 0, err
    # Two runs into one folder: uncertainty.csv keeps the first run's case beside the second's.
    table = read_uncertainty_csv(out / UNCERTAINTY_CSV)
    assert set(table) == {"clean", "shuffled"}
    clean = float(np.asarray(nib.load(out / "clean_entropy.nii.gz").dataobj).mean())
    noisy = float(np.asarray(nib.load(out / "shuffled_entropy.nii.gz").dataobj).mean())
    prediction = np.asarray(nib.load(out / "clean.nii.gz").dataobj)
    dice = 2 * np.sum(prediction * label) / (prediction.sum() + label.sum())
    assert dice > 0.6, dice  # the model learnt the task, so its certainty means something
    # Measured about 0.12 (clean) vs 0.20 (shuffled) over several training lengths and rates.
    assert noisy > 1.3 * clean and noisy - clean > 0.03, (clean, noisy)
    assert table["shuffled"].entropy_mean == pytest.approx(noisy, abs=1e-5)
    assert table["clean"].entropy_mean == pytest.approx(clean, abs=1e-5)

    # The HTML report of an evaluation of these predictions shows the scores per case.
    both = tmp_path / "both"
    (cases / "cases.csv").write_text("id,image\nclean,clean.nii.gz\nshuffled,shuffled.nii.gz\n")
    code, _, err = cli(capsys, "predict", "--model", run, "--input", cases / "cases.csv", "--output", both,
                       "--save-uncertainty", "--no-progress")
    assert code == 0, err
    csv_path = tmp_path / "eval" / "evaluation.csv"
    code, stdout, err = cli(capsys, "evaluate", "--pred", both, "--truth", truth, "--out", csv_path,
                            "--regions", "labels")
    assert code == 0, err
    assert "no truth case" not in stdout  # the entropy maps beside the label maps are not strays
    page = (tmp_path / "eval" / "evaluation_report.html").read_text(encoding="utf-8")
    assert "<h2>Uncertainty</h2>" in page and "entropy (foreground)" in page
    section = page[page.index("<h2>Uncertainty</h2>"):]
    assert "shuffled" in section and "clean" in section and 'src="data:image/png;base64,' in section
