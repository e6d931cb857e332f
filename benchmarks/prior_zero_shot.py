"""The shipped prior on real scans it never saw: zero-shot whole-tumour Dice per source and contrast.

Every shared BraTS case is predicted once per contrast it has (FLAIR and T1 for the BraTS 2018
cases, FLAIR and T1c for the BraTS 2013 ones) with ``vox2vox predict --model MODEL`` exactly as a
user runs it on a one-channel manifest, and scored on the case's own grid (Dice, HD95, predicted
volume over true volume; BraTS empty-mask rules). Beside it, the baseline a user could make by
hand: FLAIR z-scored inside the brain, thresholded, largest component kept, the threshold tuned
leave-one-case-out (on the other cases, never on the scored one).

    python benchmarks/prior_zero_shot.py --model builtin:brain-tumour --out OUT [--card FILE]

``--card`` writes the per-source, per-contrast means into a shipped model's card (its
``zero_shot`` entry); the weights' sha256 is unchanged by that.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from vox2vox.data.io import read_volume
from vox2vox.data.manifest import write_manifest
from vox2vox.report.metrics import dice, hd95

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# source folder -> (contrast -> file), label file, brain mask file (None: background is 0)
SOURCES = {
    "brats2018-deepvoxnet2": ({"flair": "FLAIR.nii.gz", "t1": "T1.nii.gz"}, "GT_W.nii.gz", None),
    "brats2015-deepmedic": ({"flair": "Flair_subtrMeanDivStd.nii.gz", "t1c": "T1c_subtrMeanDivStd.nii.gz"},
                            "OTMultiClass.nii.gz", "brainmask.nii.gz"),
}
THRESHOLDS = np.round(np.arange(0.5, 3.01, 0.1), 2)


def cases() -> list[tuple[str, str, Path]]:
    """(source, case id, folder) of every shared BraTS case; fails when the shared data is missing."""
    found = []
    for source in SOURCES:
        root = SHARED / source
        if not root.is_dir():
            raise SystemExit(f"{root}: shared data missing")
        found += [(source, f"{source}__{d.name}", d) for d in sorted(root.iterdir()) if d.is_dir()]
    return found


def truth(source: str, folder: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    label, geometry = read_volume(folder / SOURCES[source][1])
    return np.asarray(label) > 0.5, geometry.spacing


def brain(source: str, folder: Path, image: np.ndarray) -> np.ndarray:
    mask_file = SOURCES[source][2]
    if mask_file:
        return np.asarray(read_volume(folder / mask_file)[0]) > 0.5
    return image != 0


def predict(model: str, all_cases: list, contrast: str, out: Path) -> dict[str, np.ndarray]:
    """``vox2vox predict`` on a one-channel manifest of the cases that have ``contrast``."""
    rows, masks = [], {}
    for source, case_id, folder in all_cases:
        files, _, mask = SOURCES[source]
        if contrast in files:
            rows.append((case_id, {contrast: folder / files[contrast]}, None))
            if mask:
                masks[case_id] = folder / mask
    if not rows:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(out / f"{contrast}.csv", rows, masks=masks or None)
    subprocess.run([sys.executable, "-m", "vox2vox.cli", "predict", "--model", model, "--input", str(manifest),
                    "--output", str(out / contrast), "--no-progress"], check=True)
    return {case_id: np.asarray(read_volume(out / contrast / f"{case_id}.nii.gz")[0]) > 0 for case_id, _, _ in rows}


def scores(pred: np.ndarray, true: np.ndarray, spacing) -> dict[str, float]:
    return {"dice": dice(pred, true), "hd95": hd95(pred, true, spacing=spacing),
            "volume_ratio": float(pred.sum() / max(true.sum(), 1))}


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def flair_threshold(all_cases: list) -> dict[str, dict[str, float]]:
    """The hand-made baseline: z-scored FLAIR > t, largest component; t tuned leave-one-case-out."""
    dice_at: dict[str, np.ndarray] = {}
    masks: dict[str, list[np.ndarray]] = {}
    for source, case_id, folder in all_cases:
        image = np.asarray(read_volume(folder / SOURCES[source][0]["flair"])[0], dtype=np.float32)
        inside = brain(source, folder, image)
        z = (image - image[inside].mean()) / (image[inside].std() + 1e-6)
        true, _ = truth(source, folder)
        masks[case_id] = [largest_component((z > t) & inside) for t in THRESHOLDS]
        dice_at[case_id] = np.array([dice(m, true) for m in masks[case_id]])
    out = {}
    for source, case_id, folder in all_cases:
        others = np.mean([d for c, d in dice_at.items() if c != case_id], axis=0)
        best = int(np.argmax(others))
        true, spacing = truth(source, folder)
        out[case_id] = {**scores(masks[case_id][best], true, spacing), "threshold": float(THRESHOLDS[best])}
    return out


def mean_by(per_case: dict[str, dict[str, float]], source_of: dict[str, str]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict[str, float]]] = {}
    for case_id, s in per_case.items():
        groups.setdefault(source_of[case_id], []).append(s)
        groups.setdefault("all", []).append(s)
    return {g: {"dice": round(float(np.mean([s["dice"] for s in v])), 3),
                "hd95_mm": round(float(np.mean([s["hd95"] for s in v])), 1),
                "volume_ratio": round(float(np.mean([s["volume_ratio"] for s in v])), 2), "cases": len(v)}
            for g, v in groups.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:brain-tumour")
    p.add_argument("--out", required=True)
    p.add_argument("--card", default=None, help="a shipped model's card (.json) to record the zero-shot means in")
    args = p.parse_args()
    out = Path(args.out)
    all_cases = cases()
    source_of = {case_id: source for source, case_id, _ in all_cases}
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for contrast in ("flair", "t1", "t1c"):
        predicted = predict(args.model, all_cases, contrast, out)
        per_case = {}
        for source, case_id, folder in all_cases:
            if case_id in predicted:
                true, spacing = truth(source, folder)
                per_case[case_id] = scores(predicted[case_id], true, spacing)
        results[f"prior {contrast}"] = {"per_case": per_case, "means": mean_by(per_case, source_of)}
    baseline = flair_threshold(all_cases)
    results["flair threshold (LOO-tuned)"] = {"per_case": baseline, "means": mean_by(baseline, source_of)}
    for name, r in results.items():
        for group, m in r["means"].items():
            print(f"{name:<28} {group:<22} Dice {m['dice']:.3f}  HD95 {m['hd95_mm']:5.1f} mm  "
                  f"volume x{m['volume_ratio']:.2f}  ({m['cases']} cases)")
    for name, r in results.items():
        for case_id, s in r["per_case"].items():
            print(f"  {name:<28} {case_id:<40} Dice {s['dice']:.3f}  HD95 {s['hd95']:5.1f}  x{s['volume_ratio']:.2f}")
    print(f"seconds {time.perf_counter() - t0:.0f}")
    (out / "zero_shot.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.card:
        card_file = Path(args.card)
        card = json.loads(card_file.read_text())
        card["zero_shot"] = {f"{name.split()[1]} {group}": {"dice": m["dice"], "hd95_mm": m["hd95_mm"],
                                                              "cases": m["cases"]}
                             for name, r in results.items() if name.startswith("prior")
                             for group, m in r["means"].items() if group != "all"}
        card["zero_shot_source"] = "benchmarks/prior_zero_shot.py on the shared BraTS cases (benchmarks/RESULTS.md)"
        card_file.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
