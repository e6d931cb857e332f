"""Lesion-wise Dice/HD95 of vox2vox against the BraTS 2023 organisers' evaluator, on real cases.

The official evaluator (``BraTS-2023-Metrics``: ``metrics.py`` with its bundled surface_distance)
needs its own pinned requirements (pandas 1.3.4: newer pandas breaks its ``append``/``replace``
calls; that pandas needs Python <= 3.10), so it runs in its own virtual environment; give its
interpreter and a checkout of the repository::

    python3.10 -m venv OFFICIAL_VENV
    OFFICIAL_VENV/bin/pip install numpy==1.24.3 scipy==1.11.1 pandas==1.3.4 \
        connected-components-3d==3.12.1 nibabel==5.1.0
    git clone https://github.com/rachitsaluja/BraTS-2023-Metrics OFFICIAL_REPO
    PYTHONPATH=src python benchmarks/lesionwise_vs_official.py --python OFFICIAL_VENV/bin/python \
        --official OFFICIAL_REPO --cases 3

Predictions are made here from each truth: a dropped lesion (the largest truth component of the
region removed), an added false-positive blob away from the tumour, a boundary eroded by two
voxels, and the tumour shifted by three voxels. Labels are written in the BraTS 2023 convention
(1 NCR, 2 ED, 3 ET), which the official script expects. Prints every difference and exits 1 when
any Dice differs by more than 1e-6 or any HD95 by more than 0.01 mm.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from vox2vox.report.lesions import LESION_RULES, lesion_wise

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# (case name, label file, mapping from on-disk values to BraTS 2023 values)
CASES = (
    ("brats2015_pat0005", "brats2015-deepmedic/brats_2013_pat0005_1/OTMultiClass.nii.gz", {1: 1, 2: 2, 3: 1, 4: 3}),
    ("brats2015_pat0006", "brats2015-deepmedic/brats_2013_pat0006_1/OTMultiClass.nii.gz", {1: 1, 2: 2, 3: 1, 4: 3}),
    ("brats2018_case_0", "brats2018-deepvoxnet2/case_0/GT_W.nii.gz", {1: 2}),
    ("brats2018_case_1", "brats2018-deepvoxnet2/case_1/GT_W.nii.gz", {1: 2}),
    ("sarcoma_STS_008", "ct-sarcoma/STS_008/CT_mask.nii.gz", {1: 1}),
)
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
CHALLENGES = {"glioma": "BraTS-GLI", "meningioma": "BraTS-MEN", "metastases": "BraTS-MET"}

_OFFICIAL_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import warnings; warnings.simplefilter("ignore")
from metrics import get_LesionWiseResults
for line in sys.stdin:
    pred, gt, challenge, key = json.loads(line)
    df = get_LesionWiseResults(pred, gt, challenge)
    out = {row["Labels"]: {"dice": float(row["LesionWise_Score_Dice"]), "hd95": float(row["LesionWise_Score_HD95"]),
           "tp": int(row["Num_TP"]), "fp": int(row["Num_FP"]), "fn": int(row["Num_FN"])} for _, row in df.iterrows()}
    print(json.dumps([key, out]), flush=True)
"""


def perturbations(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted BraTS 2023 label maps made from the truth ``labels``."""
    whole = labels > 0
    components, n = ndimage.label(whole, structure=np.ones((3, 3, 3)))
    dropped = labels.copy()
    if n:
        sizes = ndimage.sum_labels(whole, components, range(1, n + 1))
        dropped[components == 1 + int(np.argmax(sizes))] = 0
    blob = labels.copy()
    centre = np.array(ndimage.center_of_mass(whole)).astype(int)
    far = [(c + s // 2) % s for c, s in zip(centre, labels.shape, strict=True)]  # half a volume away
    box = tuple(slice(max(f - 4, 0), f + 4) for f in far)
    blob[box] = np.where(whole[box], blob[box], 2)
    eroded = labels.copy()
    eroded[~ndimage.binary_erosion(whole, iterations=2)] = 0
    shifted = np.roll(labels, 3, axis=0)
    return {"dropped_lesion": dropped, "false_positive_blob": blob, "eroded": eroded, "shifted": shifted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="interpreter of the official evaluator's environment")
    parser.add_argument("--official", required=True, help="checkout of BraTS-2023-Metrics (holds metrics.py)")
    parser.add_argument("--rules", default="glioma,metastases", help="lesion rules to compare (comma-separated)")
    parser.add_argument("--cases", type=int, default=len(CASES), help="how many of the cases to use (the official "
                        "evaluator takes minutes per case)")
    args = parser.parse_args()
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    worst_dice = worst_hd = 0.0
    counts_differ = pairs = 0
    print(f"{'case/perturbation/rule':<46} {'region':<6} {'Dice ours':>10} {'official':>10} {'HD95 ours':>10} "
          f"{'official':>10}  TP/FP/FN ours | official", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        official = subprocess.Popen([args.python, "-c", _OFFICIAL_DRIVER, args.official], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
        for name, rel, mapping in CASES[: args.cases]:
            image = nib.load(DATA / rel)
            raw = np.rint(np.asarray(image.dataobj)).astype(np.int64)
            truth = np.zeros(raw.shape, dtype=np.uint8)
            for src, dst in mapping.items():
                truth[raw == src] = dst
            spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
            gt_path = Path(tmp) / f"{name}_gt.nii.gz"
            nib.save(nib.Nifti1Image(truth, image.affine, image.header), gt_path)
            for kind, pred in perturbations(truth).items():
                pred_path = Path(tmp) / f"{name}_{kind}.nii.gz"
                nib.save(nib.Nifti1Image(pred.astype(np.uint8), image.affine, image.header), pred_path)
                for rule in rules:
                    key = f"{name}/{kind}/{rule}"
                    official.stdin.write(json.dumps([str(pred_path), str(gt_path), CHALLENGES[rule], key]) + "\n")
                    official.stdin.flush()
                    ours = {region: lesion_wise(np.isin(pred, values), np.isin(truth, values), spacing=spacing,
                                                rule=LESION_RULES[rule]) for region, values in REGIONS.items()}
                    line = official.stdout.readline()
                    if not line:
                        print("the official evaluator stopped", file=sys.stderr)
                        return 2
                    ref_key, refs = json.loads(line)
                    assert ref_key == key
                    for region, mine in ours.items():
                        ref = refs[region]
                        pairs += 1
                        worst_dice = max(worst_dice, abs(mine.dice - ref["dice"]))
                        worst_hd = max(worst_hd, abs(mine.hd95 - ref["hd95"]))
                        counts_differ += (mine.tp, mine.fp, mine.fn) != (ref["tp"], ref["fp"], ref["fn"])
                        print(f"{key:<46} {region:<6} {mine.dice:>10.6f} {ref['dice']:>10.6f} {mine.hd95:>10.3f} "
                              f"{ref['hd95']:>10.3f}  {mine.tp}/{mine.fp}/{mine.fn} | {ref['tp']}/{ref['fp']}/{ref['fn']}",
                              flush=True)
        official.stdin.close()
        official.wait()
    print(f"pairs: {pairs}; largest |Dice difference| {worst_dice:.2e}; "
          f"largest |HD95 difference| {worst_hd:.2e} mm; lesion counts differing: {counts_differ}")
    return 0 if worst_dice <= 1e-6 and worst_hd <= 0.01 and counts_differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
