"""Region-based training (``generator.output = "regions"``): nested regions as sigmoid outputs,
converted back to the convention's labels on output."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import tiny_overrides
from vox2vox.cli import main
from vox2vox.config import Config
from vox2vox.data.io import read_volume
from vox2vox.data.labels import IGNORE_INDEX, get_convention
from vox2vox.data.preprocessing import undo_preprocessing
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.model.losses import binary_cross_entropy_from_probs, fixed_class_weights
from vox2vox.model.outputs import head_for, output_head
from vox2vox.model.residual import build_generator


def test_brats_regions_nest_and_other_conventions_are_refused():
    assert get_convention("brats").nested_regions() == (("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)))
    assert get_convention("msd-brain").nested_regions()[1] == ("TC", (2, 3))
    assert get_convention("binary").nested_regions() == (("foreground", (1,)),)
    # Three organs side by side are not a chain: no way back from overlapping sigmoids to one class.
    organs = get_convention({"name": "organs", "values": {"0": "bg", "1": "liver", "2": "spleen", "3": "kidney"}})
    with pytest.raises(Vox2VoxError, match="do not nest"):
        output_head(organs, "regions")
    crossing = get_convention({"name": "x", "values": {"0": "bg", "1": "a", "2": "b", "3": "c"},
                               "regions": {"all": [1, 2, 3], "ab": [1, 2], "bc": [2, 3]}})
    with pytest.raises(Vox2VoxError, match="do not nest"):
        output_head(crossing, "regions")


def test_region_targets_round_trip_the_labels_of_a_real_brats_case(shared_data: Path):
    """Real BraTS labels -> WT/TC/ET targets -> labels again, voxel for voxel (2015 label 3 folds into 1)."""
    convention = get_convention("brats2015")
    label, _ = read_volume(next((shared_data / "brats2015-deepmedic").glob("*/OTMultiClass.nii.gz")))
    classes = convention.to_classes(label)
    assert set(np.unique(classes)) == {0, 1, 2, 3}
    head = output_head(convention, "regions")
    targets = head.targets(torch.from_numpy(classes)[None])[0].numpy()
    assert targets.shape == (3, *classes.shape)
    source = convention.to_source(classes)
    for r, name in enumerate(head.names):  # each target channel is exactly the evaluation region
        np.testing.assert_array_equal(targets[r] > 0.5, convention.region_masks(source)[name])
    np.testing.assert_array_equal(head.to_classes(targets), classes)
    # Probabilities, not only 0/1: inner regions override outer ones at 0.5.
    np.testing.assert_array_equal(head.to_classes(0.2 + 0.6 * targets), classes)


def test_region_head_details():
    head = output_head(get_convention("brats"), "regions")
    label = torch.tensor([[[[0, 2, 1, 3, IGNORE_INDEX]]]])
    targets = head.targets(label)[0, :, 0, 0]
    np.testing.assert_array_equal(targets.numpy(), [[0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0]])
    # An ET probability above 0.5 wins even where TC is low (nnU-Net's region order).
    probs = np.array([0.9, 0.1, 0.8]).reshape(3, 1, 1, 1)
    assert head.to_classes(probs).item() == 3
    with pytest.raises(Vox2VoxError, match="3 .*expects|expects 3"):
        head.to_classes(np.zeros((4, 1, 1, 1)))
    with pytest.raises(Vox2VoxError, match="output channels"):
        head_for(4, "regions", get_convention("brats"))
    # Region probabilities outside the crop are 0 everywhere (no background channel).
    record = {"shape": [2, 2, 2], "pad": [[0, 0]] * 3, "crop": [[1, 3]] * 3, "original_shape": [4, 4, 4]}
    out = undo_preprocessing(np.full((3, 2, 2, 2), 0.7), record, order=1, background_channel=False)
    assert out[:, 0, 0, 0].tolist() == [0, 0, 0] and out[:, 1, 1, 1].tolist() == pytest.approx([0.7] * 3)


def test_region_losses_and_weights():
    torch.manual_seed(0)
    target = (torch.rand(2, 3, 4, 4, 4) > 0.5).float()
    probs = torch.rand(2, 3, 4, 4, 4).clamp(0.01, 0.99)
    expected = torch.nn.functional.binary_cross_entropy(probs, target)
    assert binary_cross_entropy_from_probs(target, probs).item() == pytest.approx(expected.item(), rel=1e-5)
    mask = torch.ones(2, 1, 4, 4, 4)
    mask[0] = 0
    masked = torch.nn.functional.binary_cross_entropy(probs[1], target[1])
    assert binary_cross_entropy_from_probs(target, probs, mask=mask).item() == pytest.approx(masked.item(), rel=1e-5)
    # Fixed weights count each region's voxels: WT holds classes 1-3.
    labels = [np.array([0] * 6 + [1, 2, 3, 3])]
    head = output_head(get_convention("brats"), "regions")
    weights = fixed_class_weights(labels, 4, membership=head.membership)
    assert weights == pytest.approx((10 / (3 * 4), 10 / (3 * 3), 10 / (3 * 2)))


def test_the_region_generator_ends_in_independent_sigmoids():
    config = Config.from_dict({"generator": {"arch": "residual", "in_channels": 2, "n_classes": 3, "output": "regions",
                                             "base_filters": 4, "depth": 2}})
    with torch.no_grad():
        probs = build_generator(config.generator).eval()(torch.randn(1, 2, 16, 16, 16))
    assert probs.shape == (1, 3, 16, 16, 16)
    assert float(probs.min()) >= 0 and float(probs.max()) <= 1
    assert not torch.allclose(probs.sum(1), torch.ones(1))  # not a softmax


@pytest.mark.slow
def test_region_training_round_trips_labels_through_train_and_predict(tmp_path, capsys):
    data = tmp_path / "brats"
    ids = write_brats_folder(data, n_cases=3, seed=2, shape=(32, 32, 24))
    run = tmp_path / "run"
    settings = tiny_overrides({"train.patch_size": "[24,24,24]", "train.batch_size": "1", "data.val_cases": "1",
                               "train.epochs": "2", "generator.output": '"regions"', "loss.lambda_ce": "1.0",
                               "train.device": '"cpu"'})
    assert main(["train", "--config", "paper", "--data", str(data), "--out", str(run), *settings]) == 0
    config = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert (config.generator.output, config.generator.n_classes, config.discriminator.n_classes) == ("regions", 3, 3)
    assert len(config.loss.class_weights) == 3  # one fixed GDL weight per region
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"val_dice_WT", "val_dice_TC", "val_dice_ET", "loss_ce"} <= set(rows[-1])
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--input", str(data), "--output", str(pred), "--no-progress",
                 "--save-probabilities", "npz"]) == 0
    for case_id in ids:
        out = nib.load(pred / f"{case_id}.nii.gz")
        ref = nib.load(data / case_id / f"{case_id}_t1.nii.gz")
        assert out.shape == ref.shape
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 4}
        with np.load(pred / f"{case_id}.npz", allow_pickle=False) as saved:
            assert saved["channels"].tolist() == ["WT", "TC", "ET"]
            assert saved["labels"].tolist() == [2, 1, 4]  # the class each region adds
            probs = saved["probabilities"]
        assert probs.shape[0] == 3 and probs.min() >= 0 and probs.max() <= 1
        # The written labels are the probabilities' classes (no post-processing asked for).
        labels_from_probs = output_head(get_convention("brats"), "regions").to_classes(probs.transpose(0, 3, 2, 1))
        np.testing.assert_array_equal(get_convention("brats").to_source(labels_from_probs), np.asarray(out.dataobj))


def test_the_plan_names_the_region_option_and_a_region_config_round_trips():
    """The plan keeps class outputs (region outputs did not win the measured CPU rounds) and says
    the regions could be trained; a planned config switched to regions is valid."""
    from vox2vox.data.fingerprint import Fingerprint
    from vox2vox.train.planner import Device, make_plan

    fp = Fingerprint(
        n_cases=8, n_labelled=8, channels=("flair", "t1c"), n_classes=4, median_spacing=(1.0, 1.0, 1.0),
        median_foreground_mm=(140.0, 170.0, 140.0), channel_kind=("mr", "mr"),
        channel_percentiles=((0.5, 900.0), (0.5, 1200.0)), class_fraction=(0.97, 0.01, 0.015, 0.005),
        median_class_voxels=(3.2e6, 3e4, 5e4, 1e4), median_components=(0.0, 2.0, 2.0, 3.0))
    cpu, table = Device("cpu", 24 * 2**30, "cpu", 2), {"48x48x48": 0.30, "64x64x64": 0.70}
    brats = make_plan(fp, device=cpu, budget_seconds=1800, throughput=table, convention=get_convention("brats"))
    assert brats.config["generator"].get("output", "classes") == "classes"
    assert any("WT/TC/ET" in reason and "generator.output=regions" in reason for reason in brats.reasons)
    switched = Config.from_dict(brats.config).with_overrides(['generator.output="regions"'])
    assert switched.generator.output == "regions"
    # No nested regions (inferred classes, or side-by-side organs): nothing to say about regions.
    organs = get_convention({"name": "organs", "values": {"0": "bg", "1": "a", "2": "b", "3": "c"}})
    for convention in (None, organs):
        plan = make_plan(fp, device=cpu, budget_seconds=1800, throughput=table, convention=convention)
        assert not any("regions" in reason for reason in plan.reasons)


def test_deep_supervision_trains_coarse_heads_and_leaves_prediction_alone():
    from vox2vox.train.state import build_state
    from vox2vox.train.training import train_step

    config = Config.from_dict({
        "generator": {"arch": "residual", "in_channels": 1, "n_classes": 2, "base_filters": 4, "depth": 3,
                      "deep_supervision": True},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": 4},
        "loss": {"adversarial": False, "dice": "per_sample", "lambda_ce": 1.0},
        "train": {"patch_size": [16, 16, 16], "batch_size": 2, "device": "cpu"}})
    state = build_state(config)
    generator = state.generator
    image, label = torch.randn(2, 1, 16, 16, 16), (torch.rand(2, 16, 16, 16) > 0.7).long()
    generator.train()
    generator(image)
    aux = generator.aux_outputs()
    assert [tuple(a.shape) for a in aux] == [(2, 2, 8, 8, 8), (2, 2, 4, 4, 4)]
    assert generator.aux_outputs() == []  # taken once
    before = [h.weight.detach().clone() for h in generator.aux_heads]
    train_step(state, image, label, config)
    assert all(not torch.equal(b, h.weight) for b, h in zip(before, generator.aux_heads, strict=True))
    # Prediction: the full-resolution output alone, nothing kept.
    generator.eval()
    with torch.no_grad():
        probs = generator(image)
    assert probs.shape == (2, 2, 16, 16, 16) and generator.aux_outputs() == []
    with pytest.raises(Vox2VoxError, match="deep_supervision"):
        Config.from_dict({"generator": {"arch": "paper", "deep_supervision": True}})
