"""``vox2vox dataset``'s check: read every case fully and list facts and every problem."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.data.hdf5 import file_of
from vox2vox.data.io import Geometry, read_channels, same_affine
from vox2vox.data.labels import LabelConvention, get_convention, infer_convention, round_label_map
from vox2vox.data.preprocessing import LoadedCase
from vox2vox.errors import Vox2VoxError


@dataclass(frozen=True)
class Problem:
    """One finding. ``severity`` "error" breaks training; "warning" deserves a look."""

    severity: str
    case_id: str
    file: str
    message: str

    def format(self) -> str:
        return f"{self.severity.upper():7s} {self.case_id}: {self.file}: {self.message}"


@dataclass
class CaseFacts:
    """What was read for one case (for the table)."""

    case_id: str
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    channels: int = 0
    label_counts: dict[int, int] | None = None


@dataclass
class DatasetReport:
    """Per-case facts and every problem; :meth:`format` renders both as text."""

    spec: DatasetSpec
    cases: list[CaseFacts] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    convention: str = "auto"

    @property
    def ok(self) -> bool:
        """True when no problem would break training (warnings allowed)."""
        return not any(p.severity == "error" for p in self.problems)

    def format(self) -> str:
        spec = self.spec
        lines = [
            f"dataset: {spec.root}",
            f"layout: {spec.layout}   channels: {', '.join(spec.channel_names)}   "
            f"labels: {self.convention}   cases: {len(spec.cases)}"
            + (f"   masks: {n_masks}" if (n_masks := sum(c.mask is not None for c in spec.cases)) else ""),
            "",
        ]
        rows = [("case", "ch", "shape", "spacing (mm)", "orient", "label values: voxels")]
        for facts in self.cases:
            rows.append(
                (
                    facts.case_id,
                    str(facts.channels),
                    "x".join(map(str, facts.shape)) if facts.shape else "-",
                    "x".join(f"{s:.3g}" for s in facts.spacing) if facts.spacing else "-",
                    facts.orientation or "-",
                    _format_counts(facts.label_counts),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for index, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        errors = sum(p.severity == "error" for p in self.problems)
        warnings = len(self.problems) - errors
        if self.problems:
            lines.append(f"problems: {errors} error(s), {warnings} warning(s)")
            lines.extend(p.format() for p in self.problems)
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def _format_counts(counts: dict[int, int] | None, *, limit: int = 8) -> str:
    """``value:voxels`` pairs; long lists (TotalSegmentator has 100+) are cut with a total."""
    if counts is None:
        return "-"
    items = [f"{v}:{n}" for v, n in counts.items()]
    if len(items) > limit:
        return " ".join(items[:limit]) + f" ... ({len(items)} values)"
    return " ".join(items)


def check_dataset(
    spec: DatasetSpec, *, convention: str | dict | LabelConvention | None = None
) -> DatasetReport:
    """Read every case fully and report facts and problems.

    Problems: missing files, unreadable files, channel/label shape or affine mismatch, label values
    outside the convention (``convention`` overrides the layout's), NaN/Inf voxels, empty
    (constant) image channels (errors); empty label maps, cases without a label while others have
    one, differing spacings across cases (warnings).
    """
    conv = get_convention(convention) if convention is not None else spec.label_convention()
    report = DatasetReport(spec, convention=conv.name if conv is not None else "auto")
    for case in spec.cases:
        report.cases.append(_check_case(case, conv, report.problems))
    if conv is None:
        _inferred_convention_problems(spec, report)
    labelled = sum(c.label is not None for c in spec.cases)
    if 0 < labelled < len(spec.cases):
        for case in spec.cases:
            if case.label is None:
                report.problems.append(
                    Problem("warning", case.case_id, "-", "no label file while other cases have one")
                )
    spacings = {tuple(round(s, 3) for s in f.spacing) for f in report.cases if f.spacing}
    if len(spacings) > 1:
        report.problems.append(
            Problem(
                "warning", "*", str(spec.root),
                f"{len(spacings)} different voxel spacings; consider preprocess.target_spacing",
            )
        )
    return report


def _inferred_convention_problems(spec: DatasetSpec, report: DatasetReport) -> None:
    """Without a convention, training infers one from the values present: say what it will be."""
    values = {v for f in report.cases if f.label_counts for v in f.label_counts}
    if not values:
        return
    try:
        inferred, note = infer_convention(values, where=spec.root)
    except Vox2VoxError as err:
        report.problems.append(Problem("error", "*", str(spec.root), _strip_path(str(err), spec.root)))
        return
    report.convention = f"auto ({inferred.n_classes} classes: {', '.join(map(str, inferred.source_values[:8]))}" + (
        ", ...)" if inferred.n_classes > 8 else ")")
    if note:
        report.problems.append(Problem("warning", "*", str(spec.root), _strip_path(note, spec.root)))


def _check_case(case: CaseFiles, conv: LabelConvention | None, problems: list[Problem]) -> CaseFacts:
    facts = CaseFacts(case.case_id)

    def add(severity: str, file: Path | str, message: str) -> None:
        problems.append(Problem(severity, case.case_id, Path(file).name, message))

    if case.absent:
        add("warning", "manifest", f"no file for channel(s) {', '.join(case.absent)} (empty manifest cell): training "
                                   "needs every channel; predict takes the case only with a model trained with "
                                   "augment.channel_dropout")
    reference: tuple[Geometry, Path] | None = None
    for file, names in case.channel_files().items():
        if not file_of(file).exists():
            add("error", file, f"missing channel '{', '.join(names)}'; add the file or fix the layout/manifest")
            continue
        try:
            data, geo = read_channels(file, nonfinite="keep")
        except Vox2VoxError as err:
            add("error", file, _strip_path(str(err), file))
            continue
        if data.shape[0] != len(names):
            add(
                "error", file,
                f"holds {data.shape[0]} volume(s) but the dataset expects {len(names)} "
                f"({', '.join(names)})",
            )
        facts.channels += data.shape[0]
        if reference is None:
            reference = (geo, file)
            facts.shape, facts.spacing, facts.orientation = geo.shape, geo.spacing, geo.orientation
        else:
            _grid_problems(reference, geo, file, add)
        _value_problems(data, file, add)
    if case.label is not None:
        label_file = Path(case.label)
        if not file_of(label_file).exists():
            add("error", label_file, "label file missing; add it or drop the label entry")
        else:
            try:
                data, geo = read_channels(label_file, nonfinite="keep")
            except Vox2VoxError as err:
                add("error", label_file, _strip_path(str(err), label_file))
            else:
                if data.shape[0] != 1:
                    add("error", label_file, f"label map has {data.shape[0]} volumes; expected 3D")
                else:
                    if reference is not None:
                        _grid_problems(reference, geo, label_file, add)
                    _label_problems(data[0], label_file, conv, facts, add)
    if case.mask is not None:
        mask_file = Path(case.mask)
        try:
            data, geo = read_channels(mask_file, nonfinite="zero")
        except Vox2VoxError as err:
            add("error", mask_file, _strip_path(str(err), mask_file))
        else:
            if reference is not None:
                _grid_problems(reference, geo, mask_file, add)
            if not (data > 0.5).any():
                add("error", mask_file, "mask is empty (no voxel > 0.5)")
    return facts


def _strip_path(message: str, file: Path) -> str:
    prefix = f"{file}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _grid_problems(reference: tuple[Geometry, Path], geo: Geometry, file: Path, add) -> None:
    ref, ref_file = reference
    if ref.shape != geo.shape:
        add("error", file, f"shape {geo.shape} differs from {ref_file.name} {ref.shape}")
    elif not same_affine(ref.affine, geo.affine):
        add(
            "error", file,
            f"voxel-to-world affine differs from {ref_file.name} (spacing {geo.spacing} vs "
            f"{ref.spacing}); register or resample to one grid",
        )


def _value_problems(data: np.ndarray, file: Path, add) -> None:
    if data.dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            add("error", file, f"{n_bad} NaN/Inf voxels; fix the file (or zero them)")
    for index, volume in enumerate(data):
        finite = volume[np.isfinite(volume)] if volume.dtype.kind == "f" else volume
        if finite.size == 0 or finite.min() == finite.max():
            where = f" (volume {index})" if data.shape[0] > 1 else ""
            add("error", file, f"empty image{where}: every voxel is the same value")


def _label_problems(label: np.ndarray, file: Path, conv: LabelConvention | None, facts: CaseFacts, add) -> None:
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)):
            add("error", file, "label map has NaN/Inf voxels")
            return
        rounded = round_label_map(label)
        if rounded is None:
            add("error", file, "label map has non-integer values; is it an image?")
            return
        label = rounded.astype(np.int64)
    values, counts = np.unique(label, return_counts=True)
    facts.label_counts = {int(v): int(n) for v, n in zip(values, counts, strict=True)}
    if conv is not None:
        unknown = sorted(set(facts.label_counts) - set(conv.accepted_values))
        if unknown:
            add(
                "error", file,
                f"label values {unknown} not in convention {conv.name!r} "
                f"(accepts {list(conv.accepted_values)}); choose another label convention",
            )
    if len(values) == 1:
        add("warning", file, f"label map is empty (only value {int(values[0])})")


def degenerate_training_data(cases: Mapping[str, LoadedCase], files: Mapping[str, CaseFiles], *,
                             where: object) -> list[str]:
    """One line per problem that lets training run but learn nothing: an image channel without
    signal (every voxel the same value after preprocessing, e.g. all zero), or no foreground label
    in any case (``where`` names the dataset). Training warns with them and goes on."""
    problems = []
    for case_id, case in cases.items():
        channels = list(files[case_id].channels.items()) if case_id in files else []
        for index, volume in enumerate(case.image):
            if volume.size and float(volume.min()) == float(volume.max()):
                name, path = channels[index] if index < len(channels) else (f"channel {index}", case_id)
                problems.append(f"{path}: no signal in the {name} channel (every voxel has the same value, e.g. "
                                "all zero); training learns nothing from it")
    if cases and not any(case.label is not None and bool(np.any(case.label > 0)) for case in cases.values()):
        problems.append(f"{where}: no case has any foreground label (every label map is background only); "
                        "the model can only learn to predict background")
    return problems


def disagreeing_labellings(cases: Mapping[str, LoadedCase], source_values: Sequence[int], *,
                           where: object) -> list[str]:
    """One line per label that looks written two ways: some cases hold it as their only
    foreground class, while in the cases with three or more classes it lies inside the others
    (under 30% of its surface touches background, median): a whole-lesion mask written as 1 beside
    sub-region labels where 1 is an inner part, such as necrosis. Training would learn that class
    with two meanings. An outer class alone (a lesion with oedema only) is normal and passes; sizes
    are not used, since lesions differ in size more than sub-regions do. ``source_values[c]`` names
    class ``c`` as written on disk. Training warns and goes on: only the labeller knows which way
    is right."""
    labels = {k: c.label for k, c in cases.items() if c.label is not None and np.any(c.label > 0)}
    present = {k: set(np.unique(v[v > 0]).tolist()) for k, v in labels.items()}
    single = {k: next(iter(v)) for k, v in present.items() if len(v) == 1}
    rich = [k for k, v in present.items() if len(v) >= 3]
    problems = []
    for c in sorted(set(single.values())):
        holders = [k for k in rich if c in present[k]]
        if not holders:
            continue
        outer = float(np.median([_background_contact(labels[k], c) for k in holders]))
        if outer >= 0.3:
            continue
        alone = [k for k, v in single.items() if v == c]
        shown = ", ".join(alone[:3]) + (f" and {len(alone) - 3} more" if len(alone) > 3 else "")
        value = int(source_values[c])
        others = sorted({int(source_values[i]) for k in holders for i in present[k]})
        problems.append(
            f"{where}: the label maps look labelled two ways: {shown} hold only label {value}, which in "
            f"{len(holders)} case(s) with labels {others} lies inside the others; if {value} is the whole lesion in "
            f"some and an inner part in the rest, training learns it with two meanings: relabel one group, or give "
            f"a label convention (data.convention, a .json) that maps both to the same classes")
    return problems


def _background_contact(label: np.ndarray, c: int) -> float:
    """Fraction of class ``c``'s surface voxels that touch background (6-neighbourhood)."""
    mask = label == c
    surface = mask & ndimage.binary_dilation(~mask)
    touching = surface & ndimage.binary_dilation(label == 0)
    return float(touching.sum()) / max(float(surface.sum()), 1.0)
