"""Fill-missing that cannot silently hurt: ``vox2vox fill-check`` measures the real, synthesised and
absent/zeroed routes and records them beside the translator; ``predict --fill-missing`` uses the
synthesis only where that record shows it helps, else predicts without the channel (a dropout
segmenter) or refuses, saying which and why."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import (
    assert_nothing_written,
    assert_user_error,
    cli,
    tiny_brats_segmenter,
    translation_checkpoint,
)
from vox2vox.data.labels import get_convention
from vox2vox.data.layouts import discover
from vox2vox.data.manifest import write_spec_manifest
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.fill_record import (
    FillRecord,
    ModelRef,
    fill_decision,
    read_record,
    record_path,
    write_record,
)
from vox2vox.model.checkpoint import file_sha256
from vox2vox.report.metrics import dice

SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fill")
    data = root / "data"
    write_brats_folder(data, n_cases=2, seed=5, shape=SHAPE)
    cases = [c.case_id for c in discover(data).cases]
    no_flair = root / "no_flair"
    for case_id in cases:
        shutil.copytree(data / case_id, no_flair / case_id)
        (no_flair / case_id / f"{case_id}_flair.nii.gz").unlink()
    return {"root": root, "data": data, "no_flair": no_flair, "cases": cases,
            "translator": translation_checkpoint(root / "t1-flair.safetensors",
                                                 prep={"target_spacing": None, "pad_multiple": 8}),
            "dropout": tiny_brats_segmenter(root / "seg-dropout.safetensors", channel_dropout=0.5),
            "plain": tiny_brats_segmenter(root / "seg-plain.safetensors")}


def _record(setup, seg: Path, *, synthesised: float, fallback_dice: float, fallback: str = "absent") -> FillRecord:
    """A record for (seg, translator) with the given mean Dice, written where predict looks."""
    record = FillRecord(channel="flair", segmenters=(ModelRef.of(seg),), translator=ModelRef.of(setup["translator"]),
                        data="cases", case_ids=("a",), dice={"real": 0.8, "synthesised": synthesised,
                                                             fallback: fallback_dice},
                        regions={}, per_case={}, fallback=fallback, min_gain=0.01)  # type: ignore[arg-type]
    write_record(record, setup["translator"])
    return record


def _predict(capsys, setup, seg, out, *extra):
    return cli(capsys, "predict", "--model", seg, "--input", setup["no_flair"], "--output", out, "--layout", "brats",
               "--no-progress", *extra)


def _labels(folder: Path, cases) -> list[np.ndarray]:
    return [np.asanyarray(nib.load(folder / f"{c}.nii.gz").dataobj) for c in cases]


def test_fill_check_measures_the_three_routes_and_records_both_models(setup, tmp_path, capsys):
    code, out, err = cli(capsys, "fill-check", "--segmenter", setup["dropout"], "--translator", setup["translator"],
                         "--data", setup["data"], "--no-progress")
    assert code == 0, err
    assert "real" in out and "synthesised" in out and "absent" in out and "record:" in out
    record = read_record(setup["translator"], [setup["dropout"]], "flair")
    assert record is not None and record.fallback == "absent" and set(record.case_ids) == set(setup["cases"])
    assert record.translator.sha256 == file_sha256(setup["translator"])
    assert record.segmenters[0].sha256 == file_sha256(setup["dropout"])
    doc = json.loads(record_path(setup["translator"], [file_sha256(setup["dropout"])], "flair").read_text())
    assert doc["helps"] == (doc["dice"]["synthesised"] - doc["dice"]["absent"] >= 0.01)
    # The real route is what predict + the BraTS regions' Dice give, case by case.
    pred = tmp_path / "real"
    assert cli(capsys, "predict", "--model", setup["dropout"], "--input", setup["data"], "--output", pred,
               "--no-progress")[0] == 0
    brats = get_convention("brats")
    for case in discover(setup["data"]).cases:
        got = brats.region_masks(np.asanyarray(nib.load(pred / f"{case.case_id}.nii.gz").dataobj))
        truth = brats.region_masks(np.rint(nib.load(case.label).get_fdata()).astype(int))
        want = np.mean([dice(got[r], truth[r]) for r in truth])
        assert record.per_case[case.case_id]["real"] == pytest.approx(want)
    # The translator's card lists the record.
    code, card, _ = cli(capsys, "info", setup["translator"])
    assert code == 0 and "fill-check" in card and f"sha256 {record.segmenters[0].sha256[:16]}" in card
    # A segmenter trained without channel dropout is compared with the channel zeroed.
    assert cli(capsys, "fill-check", "--segmenter", setup["plain"], "--translator", setup["translator"],
               "--data", setup["data"], "--max-cases", "1", "--no-progress")[0] == 0
    plain = read_record(setup["translator"], [setup["plain"]], "flair")
    assert plain is not None and plain.fallback == "zeroed" and len(plain.case_ids) == 1


def test_a_record_showing_help_uses_the_synthesis(setup, tmp_path, capsys):
    _record(setup, setup["dropout"], synthesised=0.7, fallback_dice=0.5)
    code, _, err = _predict(capsys, setup, setup["dropout"], tmp_path / "filled", "--fill-missing",
                            f"flair={setup['translator']}")
    assert code == 0, err
    assert "synthesis used" in err and "0.700 synthesised vs 0.500 absent" in err
    assert _predict(capsys, setup, setup["dropout"], tmp_path / "unchecked", "--fill-missing",
                    f"flair={setup['translator']}", "--fill-unchecked")[0] == 0
    for a, b in zip(_labels(tmp_path / "filled", setup["cases"]), _labels(tmp_path / "unchecked", setup["cases"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_record_showing_harm_falls_back_to_the_absent_channel_and_says_so(setup, tmp_path, capsys):
    _record(setup, setup["dropout"], synthesised=0.04, fallback_dice=0.18)
    code, _, err = _predict(capsys, setup, setup["dropout"], tmp_path / "filled", "--fill-missing",
                            f"flair={setup['translator']}")
    assert code == 0, err
    assert "NOT used" in err and "predicting without flair" in err and "-0.140" in err
    assert _predict(capsys, setup, setup["dropout"], tmp_path / "absent", "--missing", "flair")[0] == 0
    for a, b in zip(_labels(tmp_path / "filled", setup["cases"]), _labels(tmp_path / "absent", setup["cases"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_record_showing_harm_to_a_model_without_dropout_refuses(setup, tmp_path, capsys):
    _record(setup, setup["plain"], synthesised=0.04, fallback_dice=0.18, fallback="zeroed")
    out = tmp_path / "x"
    line = assert_user_error(_predict(capsys, setup, setup["plain"], out, "--fill-missing",
                                      f"flair={setup['translator']}"), "refused", "0.040 synthesised vs 0.180 zeroed")
    assert "channel_dropout" in line
    assert_nothing_written(out)


def test_no_record_refuses_and_names_the_check_and_the_override(setup, tmp_path, capsys):
    # Another config, so other bytes than every measured segmenter: no record.
    other = tiny_brats_segmenter(tmp_path / "unmeasured.safetensors", channel_dropout=0.25)
    out = tmp_path / "x"
    assert_user_error(_predict(capsys, setup, other, out, "--fill-missing", f"flair={setup['translator']}"),
                      "no fill-check record", "vox2vox fill-check --segmenter", "--fill-unchecked")
    assert_nothing_written(out)


def test_a_record_for_other_files_is_refused_not_used(setup, tmp_path):
    translator = tmp_path / "t.safetensors"
    shutil.copy(setup["translator"], translator)
    record = FillRecord(channel="flair", segmenters=(ModelRef.of(setup["plain"]),),
                        translator=ModelRef("elsewhere", "0" * 64), data="d", case_ids=("a",),
                        dice={"real": 1.0, "synthesised": 1.0, "zeroed": 0.0}, regions={}, per_case={},
                        fallback="zeroed", min_gain=0.01)
    write_record(record, translator)
    with pytest.raises(Vox2VoxError, match="SHA-256 differs"):
        read_record(translator, [setup["plain"]], "flair")
    path = record_path(translator, [file_sha256(setup["plain"])], "flair")
    path.write_text("{}")
    with pytest.raises(Vox2VoxError, match="not a valid fill-check record"):
        read_record(translator, [setup["plain"]], "flair")


@pytest.mark.parametrize(("synth", "fallback_dice", "tolerant", "action"), [
    (0.70, 0.50, True, "synthesise"), (0.70, 0.50, False, "synthesise"),
    (0.505, 0.50, True, "absent"),  # a gain under min_gain is no help
    (0.04, 0.18, True, "absent"), (0.04, 0.18, False, "refuse"),
])
def test_the_decision_follows_the_measured_gain(synth, fallback_dice, tolerant, action):
    record = FillRecord(channel="flair", segmenters=(ModelRef("s", "1" * 64),), translator=ModelRef("t", "2" * 64),
                        data="d", case_ids=("a", "b"), dice={"real": 0.8, "synthesised": synth,
                                                             "absent": fallback_dice},
                        regions={}, per_case={}, fallback="absent", min_gain=0.01)
    assert fill_decision("flair", "t", ["s"], record, tolerates_absent=tolerant).action == action
    assert fill_decision("flair", "t", ["s"], None, tolerates_absent=tolerant).action == "refuse"
    assert fill_decision("flair", "t", ["s"], None, tolerates_absent=tolerant, unchecked=True).action == "synthesise"
    # The override applies to a missing record only, never to a measured harm.
    assert fill_decision("flair", "t", ["s"], record, tolerates_absent=tolerant, unchecked=True).action == action
    assert dataclasses.replace(record, min_gain=0.0).helps == (synth >= fallback_dice)


def test_fill_check_mistakes_are_one_line(setup, tmp_path, capsys):
    assert_user_error(cli(capsys, "fill-check", "--segmenter", setup["plain"], "--translator", setup["translator"],
                          "--data", setup["data"], "--channel", "t1"), "synthesises flair, not t1")
    assert_user_error(cli(capsys, "fill-check", "--segmenter", setup["plain"], "--translator", setup["translator"],
                          "--data", setup["no_flair"], "--layout", "brats"), "flair")
    assert_user_error(cli(capsys, "fill-check", "--segmenter", setup["plain"], "--translator", setup["plain"],
                          "--data", setup["data"]), "a segmentation model")


def test_empty_manifest_cells_of_the_filled_channel_are_what_fill_missing_supplies(setup, tmp_path, capsys):
    spec = discover(setup["data"])
    holed = dataclasses.replace(spec, channel_names=("t1", "flair"), cases=tuple(
        dataclasses.replace(c, channels={"t1": c.channels["t1"]}, absent=("flair",)) for c in spec.cases))
    manifest = write_spec_manifest(holed, tmp_path / "cases.csv")
    # No record: --fill-unchecked then uses the synthesis, and the holes do not make the plain model refuse.
    record_path(setup["translator"], [file_sha256(setup["plain"])], "flair").unlink(missing_ok=True)
    code, _, err = cli(capsys, "predict", "--model", setup["plain"], "--input", manifest, "--output",
                       tmp_path / "filled", "--fill-missing", f"flair={setup['translator']}", "--fill-unchecked",
                       "--no-progress")
    assert code == 0, err
    assert_user_error(cli(capsys, "predict", "--model", setup["dropout"], "--input", manifest, "--output",
                          tmp_path / "x", "--fill-missing", f"flair={setup['translator']}", "--missing", "flair"),
                      "--missing flair", "--fill-missing")
