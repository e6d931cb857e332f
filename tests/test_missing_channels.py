"""Segmenters that tolerate a missing channel: channel dropout in training (augment.channel_dropout),
``predict --missing`` / an empty manifest cell, and the refusal of a model trained without it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import (
    PAPER,
    TINY_SETTINGS,
    assert_nothing_written,
    assert_user_error,
    cli,
    make_manifest,
)
from vox2vox import load_model
from vox2vox.cli import main
from vox2vox.config import Config
from vox2vox.data.augmentation import AugmentConfig, Augmenter, drop_channels
from vox2vox.data.loading import load_case, load_case_without
from vox2vox.data.manifest import read_manifest, write_spec_manifest
from vox2vox.data.preprocessing import PreprocessConfig
from vox2vox.errors import Vox2VoxError

CHANNELS = ("t1", "flair")


def test_drop_channels_never_drops_all_and_keeps_the_rate():
    rng = np.random.default_rng(0)
    draws = [drop_channels(3, 0.5, rng) for _ in range(2000)]
    assert all(len(d) < 3 for d in draws)
    assert 0.45 < np.mean([bool(d) for d in draws]) < 0.55
    assert {len(d) for d in draws if d} == {1, 2}
    assert all(drop_channels(1, 1.0, rng) == () for _ in range(10))


def test_augmenter_zeroes_the_dropped_channels_even_untouched():
    image = np.random.default_rng(1).normal(size=(3, 8, 8, 8)).astype(np.float32) + 5
    label = np.zeros((8, 8, 8), np.int64)
    augment = Augmenter(AugmentConfig(p_untouched=1.0, channel_dropout=1.0))
    out, _ = augment(image, label, np.random.default_rng(2))
    zero = [c for c in range(3) if not out[c].any()]
    assert 1 <= len(zero) <= 2
    kept = [c for c in range(3) if c not in zero]
    np.testing.assert_array_equal(out[kept], image[kept])


def test_dropout_off_draws_the_same_patches_as_before():
    image = np.random.default_rng(1).normal(size=(2, 8, 8, 8)).astype(np.float32)
    label = np.zeros((8, 8, 8), np.int64)
    a, _ = Augmenter(AugmentConfig())(image, label, np.random.default_rng(5))
    b, _ = Augmenter(AugmentConfig(channel_dropout=0.0))(image, label, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("settings, needle", [
    ({"augment": {"channel_dropout": 1.5}}, "augment.channel_dropout"),
    ({"augment": {"channel_dropout": 0.5}, "generator": {"in_channels": 1}}, "at least 2 input channels"),
    ({"augment": {"channel_dropout": 0.5}, "task": {"kind": "translate", "target": ["flair"]}}, "translation"),
])
def test_channel_dropout_is_validated(settings, needle):
    with pytest.raises(Vox2VoxError, match=needle):
        Config.from_dict(settings)


def test_an_absent_channel_is_zero_and_the_others_as_when_all_are_given(tmp_path):
    manifest = make_manifest(tmp_path, channels=CHANNELS)
    case = read_manifest(manifest).cases[0]
    prep = PreprocessConfig(crop_foreground=True)
    loaded = load_case_without(case, CHANNELS, ("flair",), prep=prep)
    full = load_case(case, convention=None, prep=prep)
    assert loaded.image.shape == full.image.shape
    assert not loaded.image[1].any()
    np.testing.assert_allclose(loaded.image[0], full.image[0])
    assert loaded.record["intensity"][1] is None and loaded.record["absent"] == ["flair"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs on a (t1, flair) manifest: one with channel dropout, one without."""
    root = tmp_path_factory.mktemp("missing")
    manifest = make_manifest(root / "data", n_cases=3, channels=CHANNELS)
    out = {"manifest": manifest, "root": root}
    for name, p in (("dropout", "0.5"), ("plain", "0")):
        code = _main(["train", "--data", manifest, "--out", root / name, *PAPER, *TINY_SETTINGS,
                      "--set", f"augment.channel_dropout={p}", "--no-progress"])
        assert code == 0
        out[name] = root / name
    return out


def _main(argv) -> int:
    return main([str(a) for a in argv])


def _t1_only(root: Path, manifest: Path) -> Path:
    """A manifest of the same cases with the t1 column only."""
    lines = manifest.read_text().splitlines()
    rows = [line.split(",") for line in lines]
    text = "\n".join(",".join([r[0], r[1]]) for r in rows) + "\n"
    path = root / "t1_only.csv"
    path.write_text(text)
    return path


def test_a_dropout_model_predicts_without_a_channel_and_says_so_in_its_card(runs, tmp_path, capsys):
    t1_only = _t1_only(runs["manifest"].parent, runs["manifest"])
    code, out, err = cli(capsys, "predict", "--model", runs["dropout"], "--input", t1_only, "--output",
                         tmp_path / "pred", "--missing", "flair", "--no-progress")
    assert code == 0, err
    labels = nib.load(str(tmp_path / "pred" / "case_000.nii.gz"))
    assert labels.shape == (16, 16, 16)
    # One case from channel files, the missing one not given.
    t1 = read_manifest(runs["manifest"]).cases[0].channels["t1"]
    code, _, err = cli(capsys, "predict", "--model", runs["dropout"], "--input", f"t1={t1}", "--output",
                       tmp_path / "one", "--missing", "flair", "--no-progress")
    assert code == 0, err
    (one,) = (tmp_path / "one").glob("*.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(one)).dataobj), np.asanyarray(labels.dataobj))
    code, card, _ = cli(capsys, "info", runs["dropout"])
    assert code == 0 and "missing input" in card and "tolerated" in card and "0.5" in card
    code, card, _ = cli(capsys, "info", runs["plain"])
    assert "refused" in card


def test_an_empty_manifest_cell_is_an_absent_channel_for_that_case(runs, tmp_path, capsys):
    lines = runs["manifest"].read_text().splitlines()
    cells = lines[1].split(",")
    cells[2] = ""  # case_000 has no flair
    holed = runs["manifest"].parent / "holed.csv"
    holed.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    assert read_manifest(holed).cases[0].absent == ("flair",)
    again = write_spec_manifest(read_manifest(holed), tmp_path / "again.csv")  # the hole survives a rewrite
    assert read_manifest(again).cases[0].absent == ("flair",) and not read_manifest(again).cases[1].absent
    code, _, err = cli(capsys, "predict", "--model", runs["dropout"], "--input", holed, "--output",
                       tmp_path / "pred", "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == [
        "case_000.nii.gz", "case_001.nii.gz", "case_002.nii.gz"]
    code, out, _ = cli(capsys, "dataset", holed)
    assert code == 0 and "case_000: manifest: no file for channel(s) flair" in out
    # Training needs every channel: the hole is one line naming the case.
    assert_user_error(cli(capsys, "train", "--data", holed, "--out", tmp_path / "run", *PAPER, *TINY_SETTINGS),
                      "case_000", "flair")


def test_a_model_trained_without_dropout_refuses_a_missing_channel(runs, tmp_path, capsys):
    t1_only = _t1_only(runs["manifest"].parent, runs["manifest"])
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", runs["plain"], "--input", t1_only, "--output", out,
                                 "--missing", "flair"), "without channel dropout", "'flair'")
    assert "best.safetensors" in line
    assert_nothing_written(out)
    # Without --missing, the input lacking a channel is refused too (and told about --missing).
    assert_user_error(cli(capsys, "predict", "--model", runs["dropout"], "--input", t1_only, "--output", out),
                      "flair")
    assert_user_error(cli(capsys, "predict", "--model", runs["dropout"], "--input", t1_only, "--output", out,
                          "--missing", "t2"), "no channel 't2'")


def test_the_python_api_predicts_with_a_channel_missing(runs):
    model = load_model(runs["dropout"])
    case = read_manifest(runs["manifest"]).cases[0]
    result = model.predict({"t1": case.channels["t1"]}, missing=["flair"])
    assert result.labels.shape == (16, 16, 16)
    t1 = nib.load(str(case.channels["t1"])).get_fdata().astype(np.float32)
    from_array = model.predict(t1[None], spacing=(1, 1, 1), missing=["flair"])
    np.testing.assert_array_equal(from_array.labels, result.labels)
    with pytest.raises(Vox2VoxError, match="without channel dropout"):
        load_model(runs["plain"]).predict({"t1": case.channels["t1"]}, missing=["flair"])
