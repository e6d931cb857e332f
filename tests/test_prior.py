"""The prior: its recipe runs, it ships checked, it predicts real scans by name and fine-tunes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_user_error, cli
from vox2vox.data.io import read_volume
from vox2vox.data.manifest import write_manifest
from vox2vox.data.randomised import ANY_MRI
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import read_model
from vox2vox.model.builtin import PREFIX, SHIPPED, find_builtin, shipped_models
from vox2vox.model.checkpoint import file_sha256, read_metadata
from vox2vox.report.metrics import dice
from vox2vox.train.prior import PRIOR_NAME, ship_prior, train_prior

BUILTIN = f"{PREFIX}{PRIOR_NAME}"
BRATS18 = "brats2018-deepvoxnet2"


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory) -> Path:
    """The prior's recipe for two steps, shipped into a folder of its own."""
    root = tmp_path_factory.mktemp("prior")
    result = train_prior(root / "run", steps=2, seed=0, device="cpu", progress=False)
    assert result.steps == 2
    ship_prior(root / "run", root / "shipped", command="test")
    return root


def test_the_recipe_trains_on_randomised_scans_and_ships_a_checked_pair(recipe_run):
    config = json.loads((recipe_run / "run" / "config.json").read_text())
    assert config["generator"]["in_channels"] == 1 and config["generator"]["n_classes"] == 2
    weights = recipe_run / "shipped" / f"{PRIOR_NAME}.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(weights)
    assert card["made_by"]["steps"] == 2 and card["generator"]["spacing_mm"] == 2.0
    meta = read_metadata(weights)
    assert meta["state"]["channels"] == [ANY_MRI] and meta["optimizers"] == {}  # generator only
    model = find_builtin(BUILTIN, recipe_run / "shipped")
    assert model.weights == weights
    assert weights.stat().st_size < 4e6


def test_a_damaged_shipped_file_is_refused(recipe_run, tmp_path):
    shutil.copytree(recipe_run / "shipped", tmp_path / "shipped")
    weights = tmp_path / "shipped" / f"{PRIOR_NAME}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(Vox2VoxError, match="sha256"):
        find_builtin(BUILTIN, tmp_path / "shipped")
    with pytest.raises(Vox2VoxError, match="no such shipped model"):
        find_builtin(f"{PREFIX}no-such-model", tmp_path / "shipped")


def test_the_prior_is_shipped_with_its_card(capsys):
    names = [m.name for m in shipped_models()]
    assert PRIOR_NAME in names
    model = find_builtin(BUILTIN)  # checks the sha256 against the card
    assert model.weights.parent == SHIPPED and model.weights.stat().st_size < 4e6
    card = model.card
    assert card["zero_shot"], "the card states measured zero-shot scores"
    assert card["limits"]
    code, out, _ = cli(capsys, "models")
    assert code == 0 and BUILTIN in out
    code, out, _ = cli(capsys, "info", BUILTIN)
    assert code == 0 and "zero-shot" in out and model.sha256 in out
    code, out, _ = cli(capsys, "info", BUILTIN, "--json")
    assert json.loads(out)["shipped"]["sha256"] == model.sha256


def test_builtin_prior_segments_a_real_flair_with_no_training(shared_data, tmp_path, capsys):
    # A regression guard on the shared case the prior does best on (0.805 when shipped); the card
    # and benchmarks/RESULTS.md give every case, most of them far lower.
    case = shared_data / BRATS18 / "case_0"
    out = tmp_path / "pred"
    code, stdout, err = cli(capsys, "predict", "--model", BUILTIN, "--input", case / "FLAIR.nii.gz", "--output", out,
                            "--no-progress")
    assert code == 0, err
    (written,) = out.glob("*.nii.gz")
    pred, geometry = read_volume(written)
    truth, truth_geometry = read_volume(case / "GT_W.nii.gz")
    assert pred.shape == truth.shape and np.allclose(geometry.affine, truth_geometry.affine)
    assert set(np.unique(pred)) <= {0, 1}
    assert dice(np.asarray(pred) > 0, np.asarray(truth) > 0.5) > 0.7


def test_builtin_prior_reads_the_channel_it_is_told_and_refuses_to_guess(shared_data, tmp_path, capsys):
    case = shared_data / BRATS18 / "case_1"
    manifest = write_manifest(tmp_path / "two.csv", [("c1", {"flair": case / "FLAIR.nii.gz", "t1": case / "T1.nii.gz"},
                                                      None)])
    assert_user_error(cli(capsys, "predict", "--model", BUILTIN, "--input", manifest, "--output", tmp_path / "p",
                          "--no-progress"), "one MRI contrast", "--channel")
    assert not (tmp_path / "p").exists()
    assert_user_error(cli(capsys, "predict", "--model", BUILTIN, "--input", manifest, "--output", tmp_path / "p",
                          "--channel", "t2", "--no-progress"), "t2", "flair, t1")
    code, _, err = cli(capsys, "predict", "--model", BUILTIN, "--input", manifest, "--output", tmp_path / "chosen",
                       "--channel", "flair", "--no-progress")
    assert code == 0, err
    code, _, err = cli(capsys, "predict", "--model", BUILTIN, "--input", f"{ANY_MRI}={case / 'FLAIR.nii.gz'}",
                       "--output", tmp_path / "alone", "--no-progress")
    assert code == 0, err
    (alone,) = (tmp_path / "alone").glob("*.nii.gz")
    chosen, _ = read_volume(tmp_path / "chosen" / "c1.nii.gz")
    assert np.array_equal(np.asarray(chosen), np.asarray(read_volume(alone)[0]))  # the FLAIR, read alone


def test_predict_warns_when_the_scan_is_not_a_brain_like_the_priors(shared_data, tmp_path):
    import nibabel as nib

    import vox2vox

    model = vox2vox.load_model(BUILTIN, device="cpu")
    flair = shared_data / BRATS18 / "case_0" / "FLAIR.nii.gz"
    assert not [w for w in model.predict(flair).warnings if "foreground" in w]  # a skull-stripped brain
    image = nib.load(flair)
    data = np.asarray(image.dataobj, dtype=np.float32)
    # The same scan with a noisy, non-zero background, as an unstripped or unmasked scan has.
    noisy = np.where(data != 0, data, np.random.default_rng(0).uniform(1.0, 5.0, data.shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(noisy, image.affine), tmp_path / "unmasked.nii.gz")
    with pytest.warns(UserWarning):
        warnings = model.predict(tmp_path / "unmasked.nii.gz").warnings
    assert any("wider than any skull-stripped brain" in w for w in warnings)


def test_channel_applies_to_one_channel_models_only(tmp_path, capsys):
    from helpers import TINY, make_manifest
    from vox2vox.cli import main

    manifest = make_manifest(tmp_path / "data", n_cases=2, channels=("t1", "t2"))
    assert main(["train", "--data", str(manifest), "--out", str(tmp_path / "run"), *TINY]) == 0
    assert_user_error(cli(capsys, "predict", "--model", tmp_path / "run", "--input", manifest, "--output",
                          tmp_path / "p", "--channel", "t1", "--no-progress"), "--channel", "one-channel model")


def test_init_from_builtin_fine_tunes_the_prior_on_real_cases(shared_data, tmp_path, capsys):
    rows = [(f"c{i}", {"flair": shared_data / BRATS18 / f"case_{i}" / "FLAIR.nii.gz"},
             shared_data / BRATS18 / f"case_{i}" / "GT_W.nii.gz") for i in (1, 2)]
    manifest = write_manifest(tmp_path / "train.csv", rows)
    out = tmp_path / "ft"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", BUILTIN,
                       "--set", "train.epochs=1", "--set", "data.val_cases=0", "--device", "cpu", "--no-progress")
    assert code == 0, err
    source = read_metadata(out / "checkpoints" / "last.safetensors")["state"]["init_from"]
    assert source["sha256"] == find_builtin(BUILTIN).sha256
    tuned = read_model(out)
    assert tuned.config.generator.base_filters == read_model(BUILTIN).config.generator.base_filters
