"""Seconds to load and preprocess one 240x240x155 BraTS case, cold (decoding NIfTI) and from cache.

Usage: ``python benchmarks/load_case.py [--data ../shared/data] [--repeats 3]``

Two cases from ``../shared/data/brats2018-deepvoxnet2/case_0``: the real 2-channel case (FLAIR, T1,
whole-tumour label) through a manifest, and a 4-channel BraTS-layout folder built from symlinks to
the same files (t1/t1ce/t2/flair/seg, the shape of a full BraTS case). Prints one line per case.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vox2vox.data.cases import CaseFiles
from vox2vox.data.labels import get_convention
from vox2vox.data.layouts import discover
from vox2vox.data.loading import load_case
from vox2vox.data.manifest import write_manifest
from vox2vox.data.preprocessing import PreprocessConfig

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _time(case: CaseFiles, convention_name: str, cache: Path, repeats: int) -> tuple[float, float, tuple]:
    """Median seconds cold (fresh cache folder each time) and warm (second load)."""
    convention = get_convention(convention_name)
    cold, warm = [], []
    shape: tuple = ()
    for index in range(repeats):
        prep = PreprocessConfig(cache_dir=str(cache / f"run{index}"))
        start = time.perf_counter()
        loaded = load_case(case, convention=convention, prep=prep)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_case(case, convention=convention, prep=prep)
        warm.append(time.perf_counter() - start)
        shape = loaded.image.shape
    return statistics.median(cold), statistics.median(warm), shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    src = args.data / "brats2018-deepvoxnet2" / "case_0"
    if not (src / "FLAIR.nii.gz").is_file():
        print(f"{src}: BraTS case not found; pass --data PATH/TO/shared/data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        manifest = write_manifest(
            tmp_path / "case.csv",
            [("case_0", {"flair": src / "FLAIR.nii.gz", "t1": src / "T1.nii.gz"}, src / "GT_W.nii.gz")],
        )
        two = discover(manifest).cases[0]
        folder = tmp_path / "brats" / "case_0"
        folder.mkdir(parents=True)
        for name, file in {"t1": "T1", "t1ce": "T1", "t2": "FLAIR", "flair": "FLAIR", "seg": "GT_W"}.items():
            (folder / f"case_0_{name}.nii.gz").symlink_to(src / f"{file}.nii.gz")
        four = discover(tmp_path / "brats").cases[0]
        print(f"load_case on 240x240x155 BraTS case_0, median of {args.repeats} "
              "(zscore-nonzero, crop to brain, pad to 16)")
        for label, case, convention in (("2 channels + label", two, "binary"),
                                        ("4 channels + label", four, "binary")):
            cold, warm, shape = _time(case, convention, tmp_path / label.split()[0], args.repeats)
            print(f"  {label}: cold {cold:.2f} s, from cache {warm:.3f} s, "
                  f"preprocessed shape {tuple(shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
