"""evaluate_folder: id matching, missing predictions, empty-mask rules, geometry checks, outputs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vox2vox.data.synthetic import write_brats_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.report.evaluation import CSV_COLUMNS, evaluate_folder
from vox2vox.report.metrics import HD95_ONE_EMPTY_MM

ANISO = np.diag([0.5, 1.0, 3.0, 1.0])


def _save(path: Path, labels: np.ndarray, affine: np.ndarray = ANISO) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(labels), affine), path)
    return path


def _tumour(shape=(12, 12, 12), z0: int = 2) -> np.ndarray:
    """BraTS-valued block: oedema 6x6x4 with a 2x2x2 enhancing centre (4) and no necrosis."""
    lab = np.zeros(shape, dtype=np.uint8)
    lab[3:9, 3:9, z0 : z0 + 4] = 2
    lab[5:7, 5:7, z0 + 1 : z0 + 3] = 4
    return lab


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_hand_computed_dice_and_hd95_with_anisotropic_spacing(tmp_path: Path) -> None:
    truth = _tumour(z0=2)
    pred = _tumour(z0=4)  # shifted 2 slices along the 3 mm axis
    _save(tmp_path / "truth" / "case1.nii.gz", truth)
    _save(tmp_path / "pred" / "case1.nii.gz", pred)
    result = evaluate_folder(tmp_path / "pred", tmp_path / "truth", regions="brats")
    by_region = {r["region"]: r for r in result.rows}
    # WT: two 6x6x4 blocks overlapping in 6x6x2 -> Dice = 2*72 / (144+144) = 0.5.
    assert by_region["WT"]["dice"] == pytest.approx(0.5)
    # The far caps lie 2 slices x 3 mm = 6 mm from the other surface (see test_metrics).
    assert by_region["WT"]["hd95"] == pytest.approx(6.0, abs=1e-4)
    # TC == ET here (no necrosis): 2x2x2 blocks shifted by 2 slices do not overlap.
    assert by_region["ET"]["dice"] == 0.0 and by_region["TC"]["dice"] == 0.0
    assert by_region["ET"]["hd95"] == pytest.approx(6.0, abs=1e-4)
    assert by_region["WT"]["vol_true_ml"] == pytest.approx(144 * 1.5 / 1000)


def test_brats_phantoms_perfect_prediction_and_outputs(tmp_path: Path) -> None:
    ids = write_brats_folder(tmp_path / "data", n_cases=2, seed=1, shape=(24, 24, 24))
    (tmp_path / "pred").mkdir()
    for case_id in ids:
        seg = nib.load(tmp_path / "data" / case_id / f"{case_id}_seg.nii.gz")
        nib.save(seg, tmp_path / "pred" / f"{case_id}.nii.gz")
    out_csv = tmp_path / "scores" / "eval.csv"
    result = evaluate_folder(tmp_path / "pred", tmp_path / "data", out_csv=out_csv)
    assert result.regions == ("WT", "TC", "ET")
    assert result.case_ids == tuple(ids)
    assert result.mean("WT") == 1.0 and result.summary["ET"]["hd95"]["mean"] == 0.0
    rows = _rows(out_csv)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert len(rows) == 2 * 3 and {r["case"] for r in rows} == set(ids)
    saved = json.loads((tmp_path / "scores" / "eval_summary.json").read_text())
    assert saved["summary"]["WT"]["dice"]["median"] == 1.0
    assert set(saved["summary"]["TC"]["dice"]) == {"mean", "std", "median", "p25", "p75", "n"}
    table = result.format_summary()
    assert "WT" in table and "HD95" in table and str(out_csv) in table


def test_matches_by_id_not_order_and_accepts_name_variants(tmp_path: Path) -> None:
    truths = {"alpha": _tumour(z0=1), "beta": _tumour(z0=5), "gamma": _tumour(z0=3)}
    for case_id, lab in truths.items():
        _save(tmp_path / "truth" / f"{case_id}_seg.nii.gz", lab)
    pred = tmp_path / "pred"
    _save(pred / "gamma.nii.gz", truths["gamma"])
    _save(pred / "beta_seg.nii.gz", truths["beta"])
    _save(pred / "alpha" / "alpha_seg.nii.gz", truths["alpha"])
    _save(pred / "aaa.nii.gz", truths["beta"])  # sorts first, belongs to no case
    result = evaluate_folder(pred, tmp_path / "truth")
    assert result.case_ids == ("alpha", "beta", "gamma")
    assert all(r["dice"] == 1.0 for r in result.rows)
    assert result.unmatched == ("aaa.nii.gz",) and result.missing == ()


def test_missing_prediction_scored_as_empty(tmp_path: Path) -> None:
    _save(tmp_path / "truth" / "has_tumour.nii.gz", _tumour())
    _save(tmp_path / "truth" / "no_tumour.nii.gz", np.zeros((12, 12, 12), np.uint8))
    _save(tmp_path / "truth" / "present.nii.gz", _tumour())
    _save(tmp_path / "pred" / "present.nii.gz", _tumour())
    result = evaluate_folder(tmp_path / "pred", tmp_path / "truth", out_csv=tmp_path / "e.csv")
    assert result.missing == ("has_tumour", "no_tumour")
    rows = {(r["case"], r["region"]): r for r in result.rows}
    # Truth has tumour, prediction missing -> empty: Dice 0, HD95 373.13.
    assert rows["has_tumour", "WT"]["dice"] == 0.0
    assert rows["has_tumour", "WT"]["hd95"] == HD95_ONE_EMPTY_MM
    assert rows["has_tumour", "WT"]["missing_prediction"] is True
    # Empty truth and missing (empty) prediction: Dice 1, HD95 0.
    assert rows["no_tumour", "ET"]["dice"] == 1.0 and rows["no_tumour", "ET"]["hd95"] == 0.0
    assert rows["present", "WT"]["dice"] == 1.0
    assert result.mean("WT") == pytest.approx(2 / 3)
    assert "has_tumour" in result.format_summary()
    csv_rows = _rows(tmp_path / "e.csv")
    assert {r["missing_prediction"] for r in csv_rows if r["case"] == "has_tumour"} == {"1"}


def test_empty_mask_rules_per_region(tmp_path: Path) -> None:
    no_et = _tumour()
    no_et[no_et == 4] = 2  # truth without enhancing tumour
    _save(tmp_path / "truth" / "a.nii.gz", no_et)
    _save(tmp_path / "truth" / "b.nii.gz", no_et)
    _save(tmp_path / "pred" / "a.nii.gz", no_et)  # agrees: ET empty in both
    _save(tmp_path / "pred" / "b.nii.gz", _tumour())  # predicts ET where there is none
    result = evaluate_folder(tmp_path / "pred", tmp_path / "truth")
    rows = {(r["case"], r["region"]): r for r in result.rows}
    assert rows["a", "ET"]["dice"] == 1.0 and rows["a", "ET"]["hd95"] == 0.0
    assert rows["b", "ET"]["dice"] == 0.0 and rows["b", "ET"]["hd95"] == HD95_ONE_EMPTY_MM
    assert result.summary["ET"]["dice"]["mean"] == pytest.approx(0.5)


def test_geometry_mismatch_names_the_file(tmp_path: Path) -> None:
    _save(tmp_path / "truth" / "c.nii.gz", _tumour())
    bad_shape = _save(tmp_path / "pred1" / "c.nii.gz", _tumour(shape=(12, 12, 10)))
    with pytest.raises(Vox2VoxError, match=re.escape(str(bad_shape))):
        evaluate_folder(tmp_path / "pred1", tmp_path / "truth")
    bad_affine = _save(tmp_path / "pred2" / "c.nii.gz", _tumour(), affine=np.eye(4))
    with pytest.raises(Vox2VoxError, match=re.escape(str(bad_affine))):
        evaluate_folder(tmp_path / "pred2", tmp_path / "truth")


def test_probabilities_are_rejected(tmp_path: Path) -> None:
    _save(tmp_path / "truth" / "c.nii.gz", _tumour())
    _save(tmp_path / "pred" / "c.nii.gz", _tumour().astype(np.float32) * 0.3)
    with pytest.raises(Vox2VoxError, match="non-integer"):
        evaluate_folder(tmp_path / "pred", tmp_path / "truth")


def test_per_label_regions_and_explicit_convention(tmp_path: Path) -> None:
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[1:4] = 1
    truth[6:9] = 3
    pred = truth.copy()
    pred[6:9] = 1
    _save(tmp_path / "truth" / "k.nii.gz", truth)
    _save(tmp_path / "pred" / "k.nii.gz", pred)
    result = evaluate_folder(tmp_path / "pred", tmp_path / "truth", regions="labels")
    assert result.regions == ("label_1", "label_3", "foreground")
    rows = {r["region"]: r for r in result.rows}
    assert rows["foreground"]["dice"] == 1.0
    assert rows["label_1"]["dice"] == pytest.approx(2 * 270 / (270 + 540))
    assert rows["label_3"]["dice"] == 0.0
    # BraTS 2023 values: enhancing tumour is 3, so ET is the label-3 region.
    r23 = evaluate_folder(tmp_path / "pred", tmp_path / "truth", convention="brats2023")
    assert {r["region"]: r["dice"] for r in r23.rows}["ET"] == 0.0
    assert {r["region"]: r["dice"] for r in r23.rows}["WT"] == 1.0


def test_bad_folders_are_user_errors(tmp_path: Path) -> None:
    _save(tmp_path / "truth" / "c.nii.gz", _tumour())
    with pytest.raises(Vox2VoxError, match="prediction folder"):
        evaluate_folder(tmp_path / "nope", tmp_path / "truth")
    (tmp_path / "pred").mkdir()
    with pytest.raises(Vox2VoxError):
        evaluate_folder(tmp_path / "pred", tmp_path / "missing_truth")


def test_truth_from_a_manifest_csv(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lab_a = _save(data / "a_label.nii.gz", _tumour(z0=1))
    lab_b = _save(data / "b_label.nii.gz", _tumour(z0=5))
    img = _save(data / "img.nii.gz", np.ones((12, 12, 12), np.float32))
    manifest = data / "cases.csv"
    manifest.write_text(f"id,ct,label\ncase_b,{img.name},{lab_b.name}\ncase_a,{img.name},{lab_a.name}\n")
    _save(tmp_path / "pred" / "case_a.nii.gz", _tumour(z0=1))
    result = evaluate_folder(tmp_path / "pred", manifest, regions="labels")
    assert result.case_ids == ("case_b", "case_a")
    assert result.missing == ("case_b",)
    rows = {(r["case"], r["region"]): r["dice"] for r in result.rows}
    assert rows["case_a", "label_2"] == 1.0 and rows["case_b", "label_2"] == 0.0


# --------------------------------------------------------------------------------------------
# regions that fit the data (issue: binary data must never be scored on BraTS regions)
# --------------------------------------------------------------------------------------------


def _binary_manifest(tmp_path: Path, shared: Path, folder: str, label: str, image: str, n: int = 2) -> Path:
    """A manifest over real binary-labelled cases; predictions are the truths eroded by one voxel."""
    from scipy import ndimage

    cases = sorted(p for p in (shared / folder).iterdir() if p.is_dir())[:n]
    lines = ["id,image,label"]
    for case in cases:
        lines.append(f"{case.name},{case / image},{case / label}")
        truth = nib.load(case / label)
        mask = np.rint(np.asarray(truth.dataobj)) > 0
        _save(tmp_path / "pred" / f"{case.name}.nii.gz", ndimage.binary_erosion(mask).astype(np.uint8), truth.affine)
    manifest = tmp_path / "cases.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_binary_manifest_is_scored_on_one_foreground_region_never_brats(tmp_path: Path, shared_data: Path) -> None:
    manifest = _binary_manifest(tmp_path, shared_data, "ct-sarcoma", "CT_mask.nii.gz", "CT_image.nii.gz")
    result = evaluate_folder(tmp_path / "pred", manifest, out_csv=tmp_path / "e.csv")
    assert result.regions == ("foreground",)
    assert "label values 0/1" in result.regions_why and "read from the label values" in result.regions_why
    assert result.lesion_rule == "lesion-wise off"  # not a BraTS label set
    dice = [r["dice"] for r in result.rows]
    assert len(dice) == 2 and all(0.3 < d < 1.0 for d in dice)  # eroded by a voxel: neither 0 nor 1
    assert result.format_summary().splitlines()[0].startswith("Scoring regions foreground: ")
    summary = json.loads(result.json_path.read_text())
    assert summary["regions"] == ["foreground"] and summary["convention"] == "classes"
    assert "nsd" in summary["summary"]["foreground"] and "lesion_dice" not in summary["summary"]["foreground"]


def test_regions_brats_on_binary_data_is_refused_in_one_line(tmp_path: Path, shared_data: Path, capsys) -> None:
    from vox2vox.cli import main

    manifest = _binary_manifest(tmp_path, shared_data, "brats2018-deepvoxnet2", "GT_W.nii.gz", "FLAIR.nii.gz", n=1)
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(manifest), "--regions", "brats",
                 "--out", str(tmp_path / "e.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "--regions brats needs BraTS labels" in err and "0/1" in err
    assert not (tmp_path / "e.csv").exists()


def test_brats_values_still_get_wt_tc_et_and_lesion_wise_scores(tmp_path: Path) -> None:
    truth = _tumour()
    truth[4:6, 4:6, 2] = 1  # 0/1/2/4: BraTS 2017-21 values, no convention declared anywhere
    pred = truth.copy()
    pred[0:2, 0:2, 10:12] = 2  # a false-positive blob far from the tumour
    _save(tmp_path / "truth" / "c.nii.gz", truth)
    _save(tmp_path / "pred" / "c.nii.gz", pred)
    result = evaluate_folder(tmp_path / "pred", tmp_path / "truth", out_csv=tmp_path / "e.csv")
    assert result.regions == ("WT", "TC", "ET")
    assert result.format_summary().splitlines()[0].startswith("Scoring regions WT, TC, ET: BraTS regions")
    assert result.lesion_rule.startswith("lesion-wise glioma")
    wt = next(r for r in result.rows if r["region"] == "WT")
    # One lesion found exactly (its volume 0.5*1*3*146 = 219 mm^3 > 50) and one false positive.
    assert (wt["lesion_tp"], wt["lesion_fp"], wt["lesion_fn"]) == (1, 1, 0)
    assert wt["lesion_dice"] == pytest.approx(0.5) and wt["lesion_hd95"] == pytest.approx(374.0 / 2)
    lesions = _rows(tmp_path / "e_lesions.csv")
    assert {(r["region"], r["kind"]) for r in lesions} >= {("WT", "truth"), ("WT", "fp")}
    assert json.loads((tmp_path / "e_summary.json").read_text())["lesion_rule"].startswith("lesion-wise glioma")


def test_brats2015_values_need_the_convention_for_brats_regions(tmp_path: Path, shared_data: Path) -> None:
    case = shared_data / "brats2015-deepmedic" / "brats_2013_pat0005_1"
    truth = nib.load(case / "OTMultiClass.nii.gz")
    labels = np.rint(np.asarray(truth.dataobj)).astype(np.uint8)
    _save(tmp_path / "truth" / "p5.nii.gz", labels, truth.affine)
    _save(tmp_path / "pred" / "p5.nii.gz", np.roll(labels, 2, axis=0), truth.affine)
    plain = evaluate_folder(tmp_path / "pred", tmp_path / "truth", lesion_rule="off")
    assert plain.regions == ("label_1", "label_2", "label_3", "label_4", "foreground")  # 0-4 is not 0/1/2/4
    told = evaluate_folder(tmp_path / "pred", tmp_path / "truth", convention="brats2015", lesion_rule="off")
    assert told.regions == ("WT", "TC", "ET") and "given (--convention)" in told.regions_why
    wt = {r["region"]: r["dice"] for r in told.rows}["WT"]
    assert wt == pytest.approx({r["region"]: r["dice"] for r in plain.rows}["foreground"])


def test_the_predicting_models_recorded_convention_chooses_the_regions(tmp_path: Path) -> None:
    from vox2vox.data.labels import get_convention, write_prediction_record

    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[3:5, 3:5, 3:5] = 3
    _save(tmp_path / "truth" / "k.nii.gz", truth)
    _save(tmp_path / "pred" / "k.nii.gz", truth)
    assert evaluate_folder(tmp_path / "pred", tmp_path / "truth").regions == ("label_1", "label_3", "foreground")
    write_prediction_record(tmp_path / "pred", get_convention("brats2023"))
    result = evaluate_folder(tmp_path / "pred", tmp_path / "truth")
    assert result.regions == ("WT", "TC", "ET") and "recorded by the model" in result.regions_why
    (tmp_path / "pred" / "labels.json").write_text('{"written_by": "vox2vox predict", "label_convention": 7}')
    with pytest.raises(Vox2VoxError, match="labels.json: malformed label record"):
        evaluate_folder(tmp_path / "pred", tmp_path / "truth")
