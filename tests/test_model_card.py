"""Model cards: `vox2vox info` (text and --json) for a trained run and for old checkpoints, and
predict's warning for inputs unlike the training data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import TINY, assert_user_error, ball, cli, make_manifest, make_model, save_nifti
from vox2vox.cli import main
from vox2vox.config import Config
from vox2vox.data.cases import CaseFiles
from vox2vox.data.loading import load_case
from vox2vox.data.preprocessing import PreprocessConfig
from vox2vox.data.profile import distribution_problems, profile_from_records
from vox2vox.model.checkpoint import Checkpoint, save_checkpoint
from vox2vox.model.generator import Generator


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny binary model trained for two epochs on two cases, validated on a third."""
    root = tmp_path_factory.mktemp("card")
    manifest = make_manifest(root / "data", n_cases=3)
    args = ["train", "--data", str(manifest), "--out", str(root / "run"), *TINY,
            "--set", "data.val_cases=1", "--set", "train.epochs=2"]
    assert main(args) == 0
    return root / "run"


def test_info_shows_the_card_of_a_trained_run(run, capsys):
    code, out, err = cli(capsys, "info", run)
    assert code == 0, err
    best = run / "checkpoints" / "best.safetensors"
    sha = hashlib.sha256(best.read_bytes()).hexdigest()
    fields = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith(" "))
    assert fields["sha256"].strip() == sha
    assert fields["channels"].strip() == "image"
    assert "[zscore-nonzero]" in fields["normalization"]
    assert "no resampling" in fields["spacing"]
    assert "0 class_0, 1 class_1" in fields["labels"] or "0 background" in fields["labels"]
    assert "3 cases (2 train, 1 validation)" in out
    assert "MR; foreground" in out
    assert "2 epochs, 4 steps" in fields["training"]
    assert "best Dice 0." in fields["validation"] and "last 0." in fields["validation"]
    assert "torch" in fields["versions"]
    assert "not recorded" not in out


def test_info_json_is_the_same_card_for_machines(run, capsys):
    code, out, _ = cli(capsys, "info", run, "--json")
    assert code == 0
    card = json.loads(out)
    assert card["sha256"] == hashlib.sha256((run / "checkpoints" / "best.safetensors").read_bytes()).hexdigest()
    assert card["channels"] == ["image"]
    assert card["normalization"]["method"] == "zscore-nonzero"
    assert card["training_data"]["n_train"] == 2 and card["training_data"]["n_val"] == 1
    assert card["training_data"]["channels"][0]["kind"] == "mr"
    median = card["training_data"]["channels"][0]["median"]
    assert 90 < median[0] <= median[1] <= median[2] < 110  # the balls' intensities are N(100, 10)
    assert card["training_data"]["spacing"][0] == [1.0, 1.0, 1.0]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert card["training"]["epochs"] == 2 and card["training"]["steps"] == metrics[-1]["step"]
    assert card["training"]["best_dice"] == pytest.approx(max(m["val_dice"] for m in metrics))
    assert card["training"]["last_dice"] == pytest.approx(metrics[-1]["val_dice"])
    assert card["training"]["seconds"] > 0
    assert card["fine_tuned_from"] is None
    assert card["versions"]["torch"] == torch.__version__


def test_info_of_old_checkpoints_says_not_recorded(tmp_path, capsys):
    old = make_model(tmp_path / "old.safetensors")  # channels and labels, nothing of the card
    code, out, _ = cli(capsys, "info", old)
    assert code == 0
    assert "training data  not recorded" in out and "best Dice not recorded" in out
    assert "time not recorded" in out
    code, out, _ = cli(capsys, "info", old, "--json")
    card = json.loads(out)
    assert card["training_data"] is None and card["training"]["best_dice"] is None
    assert card["channels"] == ["c0"]
    # Older still: no channels or labels recorded at all.
    config = Config.from_dict({"generator": {"in_channels": 1, "n_classes": 2, "base_filters": 4, "depth": 3,
                                             "bottleneck_blocks": 1}, "train": {"patch_size": [24, 24, 24]}})
    bare = tmp_path / "bare.safetensors"
    save_checkpoint(bare, Checkpoint(config=config.to_dict(), generator=Generator(config.generator).state_dict()))
    code, out, _ = cli(capsys, "info", bare)
    assert code == 0
    assert "channels       not recorded" in out and "labels         not recorded" in out
    assert "training       not recorded" in out


def test_info_refuses_a_malformed_card(tmp_path, capsys):
    path = make_model(tmp_path / "m.safetensors")
    from vox2vox.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    ckpt.state["data_profile"] = {"n_train": 2, "n_val": 0, "spacing": "1 mm"}
    save_checkpoint(path, ckpt)
    assert_user_error(cli(capsys, "info", path), str(path), "state.data_profile")
    assert_user_error(cli(capsys, "info", tmp_path / "missing.safetensors"), "no checkpoint found")


def test_predict_warns_once_per_case_for_a_wrongly_scaled_input_only(run, tmp_path, capsys):
    image, _ = ball(0)
    matching = save_nifti(tmp_path / "in" / "matching.nii.gz", image)
    code, _, err = cli(capsys, "predict", "--model", run, "--input", matching, "--output", tmp_path / "out1",
                       "--no-progress")
    assert code == 0, err
    assert "warning" not in err
    scaled = save_nifti(tmp_path / "in2" / "scaled.nii.gz", image * 1000)
    code, _, err = cli(capsys, "predict", "--model", run, "--input", scaled, "--output", tmp_path / "out2",
                       "--no-progress")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert "scaled" in warnings[0] and "wrong units or scaling" in warnings[0]
    assert (tmp_path / "out2" / "scaled.nii.gz").is_file()  # a warning, not a failure


def test_predict_warns_for_a_far_spacing(run, tmp_path, capsys):
    image, _ = ball(1)
    coarse = save_nifti(tmp_path / "in" / "coarse.nii.gz", image, affine=np.diag([4.0, 4.0, 4.0, 1.0]))
    code, _, err = cli(capsys, "predict", "--model", run, "--input", coarse, "--output", tmp_path / "out",
                       "--no-progress")
    assert code == 0, err
    line = next(line for line in err.splitlines() if "warning" in line)
    assert "coarse" in line and "spacing 4 mm" in line
    assert nib.load(str(tmp_path / "out" / "coarse.nii.gz")).shape == image.shape


def _record(p00: float, median: float, p99: float, spacing: float = 1.0) -> dict:
    stats = {"p00_5": p00, "median": median, "p99_5": p99, "mean": median, "std": 1.0, "min": p00, "max": p99}
    return {"original_spacing": [spacing] * 3, "original_shape": [64, 64, 64], "intensity": [stats]}


def test_raw_intensity_models_compare_percentiles_and_modality():
    """CT models see Hounsfield units as they are: a shifted median matters, and MR looks unlike CT."""
    training = [_record(-1000.0, 40.0, 1200.0), _record(-1000.0, 50.0, 1300.0)]
    profile = profile_from_records(training, ["ct"], n_train=2, n_val=0)
    assert profile.channels[0].kind == "ct"
    assert distribution_problems(profile, _record(-1000.0, 45.0, 1250.0), normalize="ct-window") == []
    # Stored without the rescale intercept (+1024): no air at -1000 any more.
    shifted = distribution_problems(profile, _record(24.0, 1074.0, 2274.0), normalize="ct-window")
    assert any("foreground 0.5th percentile 24 (training -1000)" in p for p in shifted), shifted
    mr = distribution_problems(profile, _record(0.0, 300.0, 900.0), normalize="ct-window")
    assert any("looks like MR, training was CT" in p for p in mr)
    assert distribution_problems(profile, _record(-1000.0, 45.0, 1250.0), normalize="ct-window",
                                 channel_names=["t1"]) == ["channels t1 given for the model's ct"]


@pytest.mark.slow
def test_real_cases_like_the_training_data_stay_silent_and_others_are_named(shared_data):
    """Leave-one-out on real data: each sarcoma CT against the others (raw HU, ct-window) and each
    BraTS case against the others (z-scored) gives no warning, nor do already z-scored BraTS cases;
    a CT against the BraTS profile and a x1000 BraTS case do."""
    ct = PreprocessConfig(normalize="ct-window", ct_window=(-1000.0, 1000.0))
    sarcoma = {p.name: load_case(CaseFiles(p.name, {"ct": p / "CT_image.nii.gz"}, None), convention=None,
                                 prep=ct).record for p in sorted((shared_data / "ct-sarcoma").glob("STS_*"))}
    brats = {p.name: load_case(CaseFiles(p.name, {"flair": p / "FLAIR.nii.gz", "t1": p / "T1.nii.gz"}, None),
                               convention=None, prep=PreprocessConfig()).record
             for p in sorted((shared_data / "brats2018-deepvoxnet2").glob("case_*"))}
    assert len(sarcoma) == 5 and len(brats) == 6
    for records, names, normalize in ((sarcoma, ["ct"], "ct-window"), (brats, ["flair", "t1"], "zscore-nonzero")):
        for held_out, record in records.items():
            others = [r for name, r in records.items() if name != held_out]
            profile = profile_from_records(others, names, n_train=len(others), n_val=0)
            assert distribution_problems(profile, record, normalize=normalize, channel_names=names) == [], held_out
    profile = profile_from_records(list(brats.values()), ["flair", "t1"], n_train=6, n_val=0)
    # Already z-scored inputs (another preprocessing, not an error for a z-scoring model): silent.
    for folder in sorted((shared_data / "brats2015-deepmedic").glob("brats_*")):
        channels = {"flair": folder / "Flair_subtrMeanDivStd.nii.gz", "t1": folder / "T1c_subtrMeanDivStd.nii.gz"}
        record = load_case(CaseFiles(folder.name, channels, None, folder / "brainmask.nii.gz"), convention=None,
                           prep=PreprocessConfig()).record
        assert distribution_problems(profile, record, normalize="zscore-nonzero") == [], folder.name
    ct_case = dict(sarcoma["STS_041"], intensity=sarcoma["STS_041"]["intensity"] * 2)
    problems = distribution_problems(profile, ct_case, normalize="zscore-nonzero")
    assert any("spacing 3.27 mm on axis 2" in p for p in problems)
    assert any("flair looks like CT, training was MR" in p for p in problems)
    scaled = dict(brats["case_0"], intensity=[{k: v * 1000 for k, v in s.items()} for s in brats["case_0"]["intensity"]])
    assert any("wrong units or scaling" in p for p in distribution_problems(profile, scaled, normalize="zscore-nonzero"))
