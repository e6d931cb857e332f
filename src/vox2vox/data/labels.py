"""Label conventions as data: which on-disk values mean which training class, and which regions.

The network trains on contiguous class indices ``0..n-1``; files use each dataset's own values
(BraTS 2018-21 writes enhancing tumour as 4, so classes are 0/1/2/3 <-> values 0/1/2/4). A
:class:`LabelConvention` converts both ways, so predictions are written back in the convention the
user's data came in (docs/method.md, "Task and labels").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vox2vox.atomic import atomic_write_text
from vox2vox.errors import Vox2VoxError


@dataclass(frozen=True)
class LabelConvention:
    """How label values on disk map to class indices, and the evaluation regions.

    ``source_values[c]`` is the value on disk for class ``c``; ``extra_map`` folds other on-disk
    values into one of those first (BraTS 2015's label 3, non-enhancing core, joins 1). Regions are
    sets of SOURCE values (e.g. BraTS ``WT = (1, 2, 4)``).
    """

    name: str
    source_values: tuple[int, ...]
    class_names: tuple[str, ...]
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    extra_map: dict[int, int] = field(default_factory=dict)
    # On-disk value of voxels left unlabelled (nnU-Net's "ignore" label): they become class
    # IGNORE_INDEX, which the losses, validation and evaluation leave out.
    ignore: int | None = None

    def __post_init__(self) -> None:
        if len(self.source_values) < 2:
            raise Vox2VoxError(f"label convention {self.name!r}: needs at least 2 classes")
        if len(set(self.source_values)) != len(self.source_values):
            raise Vox2VoxError(f"label convention {self.name!r}: source values repeat")
        if len(self.class_names) != len(self.source_values):
            raise Vox2VoxError(
                f"label convention {self.name!r}: {len(self.class_names)} class names for "
                f"{len(self.source_values)} values; give one name per value"
            )
        if any(v < 0 for v in self.source_values):
            raise Vox2VoxError(f"label convention {self.name!r}: label values must be >= 0")
        for src, dst in self.extra_map.items():
            if dst not in self.source_values:
                raise Vox2VoxError(
                    f"label convention {self.name!r}: extra_map sends {src} to {dst}, which is "
                    "not one of the values"
                )
        if self.ignore is not None and (
            self.ignore < 0 or self.ignore in self.source_values or self.ignore in self.extra_map
        ):
            raise Vox2VoxError(
                f"label convention {self.name!r}: ignore label {self.ignore} must be >= 0 and not a class value"
            )
        for region, values in self.regions.items():
            unknown = set(values) - set(self.source_values)
            if unknown:
                raise Vox2VoxError(
                    f"label convention {self.name!r}: region {region} uses unknown values "
                    f"{sorted(unknown)}"
                )

    @property
    def n_classes(self) -> int:
        """Number of training classes, background included."""
        return len(self.source_values)

    @property
    def accepted_values(self) -> tuple[int, ...]:
        """Every on-disk value this convention accepts (classes plus folded extras), sorted."""
        ignore = () if self.ignore is None else (self.ignore,)
        return tuple(sorted(set(self.source_values) | set(self.extra_map) | set(ignore)))

    @functools.cached_property
    def _class_index(self) -> dict[int, int]:
        """On-disk value -> class index (a dict: conventions may have thousands of values)."""
        index = {value: c for c, value in enumerate(self.source_values)}
        index.update({src: index[dst] for src, dst in self.extra_map.items()})
        if self.ignore is not None:
            index[self.ignore] = IGNORE_INDEX
        return index

    def class_of(self, value: int) -> int | None:
        """The class index of one on-disk value (IGNORE_INDEX for the ignore label), None if unknown."""
        return self._class_index.get(value)

    def to_classes(self, label: np.ndarray, *, path: str | Path | None = None) -> np.ndarray:
        """Map an on-disk label array (any shape, int or integral float) to int64 class indices.

        Raises :class:`Vox2VoxError` naming ``path`` and the offending values when the array holds
        values the convention does not know (or non-integral values).
        """
        where = f"{path}: " if path is not None else ""
        label = np.asarray(label)
        if label.dtype.kind == "f":
            rounded = round_label_map(label)
            if rounded is None:
                raise Vox2VoxError(
                    f"{where}label map has non-integer values; it looks like an image, not a "
                    f"label map (convention {self.name!r})"
                )
            # Values beyond int64 cannot be cast; they are unknown labels anyway (clip for the report).
            label = np.clip(rounded, -1, np.iinfo(np.int32).max).astype(np.int64)
        elif label.dtype.kind not in "iub":
            raise Vox2VoxError(f"{where}label map has dtype {label.dtype}; expected integers")
        label = label.astype(np.int64, copy=False)
        # Map the distinct values, never a table indexed by value: a label map holding 2**40
        # must cost its voxels, not 2**40 table entries.
        values, inverse = np.unique(label, return_inverse=True)
        classes = [self.class_of(int(v)) for v in values]
        unknown = [int(v) for v, c in zip(values, classes, strict=True) if c is None]
        if unknown:
            shown = ", ".join(str(v) for v in sorted(unknown)[:10])
            more = f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""
            raise Vox2VoxError(
                f"{where}label values {shown}{more} are not in convention {self.name!r} "
                f"(accepts {list(self.accepted_values)}); choose another label convention (data.convention, --convention) "
                "or a custom value map"
            )
        return np.asarray(classes, dtype=np.int64)[inverse.reshape(label.shape)]

    def to_source(self, classes: np.ndarray) -> np.ndarray:
        """Map class indices back to on-disk values, in the smallest fitting unsigned/int dtype."""
        classes = np.asarray(classes)
        lowest = IGNORE_INDEX if self.ignore is not None else 0
        if classes.size and (classes.min() < lowest or classes.max() >= self.n_classes):
            raise Vox2VoxError(
                f"class indices outside 0..{self.n_classes - 1} for convention {self.name!r}"
            )
        values = self.source_values + (() if self.ignore is None else (self.ignore,))
        top = max(values)
        dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int64
        # Index -1 (IGNORE_INDEX) takes the last entry: the ignore value.
        return np.asarray(values, dtype=dtype)[classes.astype(np.int64, copy=False)]

    def value_names(self) -> dict[int, str]:
        """On-disk value -> class name for every foreground class (figure legends)."""
        return {
            value: name
            for value, name in zip(self.source_values, self.class_names, strict=True)
            if value != self.source_values[0]
        }

    def scoring_regions(self) -> dict[str, tuple[int, ...]]:
        """The regions scored for this label set, in SOURCE values (see :func:`scoring_regions_for`)."""
        return scoring_regions_for(self)

    def region_masks(self, label_source: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean masks per scoring region for a label map in SOURCE values."""
        return {name: np.isin(label_source, values) for name, values in self.scoring_regions().items()}

    def nested_regions(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The regions as CLASS indices, outermost first, when they nest into a chain that names every
        class: each region holds the next one and exactly one more class, the first one holds every
        foreground class (BraTS: WT > TC > ET). Region-based training (``generator.output =
        "regions"``) predicts these as overlapping sigmoid outputs and needs the chain to turn them
        back into one class per voxel; anything else raises :class:`Vox2VoxError` saying why.
        """
        regions = self.regions or {
            name: (value,) for name, value in zip(self.class_names, self.source_values, strict=True)
            if value != self.source_values[0]
        }
        index = {value: c for c, value in enumerate(self.source_values)}
        chain = sorted(((name, frozenset(index[v] for v in values)) for name, values in regions.items()),
                       key=lambda item: -len(item[1]))
        foreground = frozenset(range(1, self.n_classes))
        why = None
        if not chain or chain[0][1] != foreground:
            why = "the largest region must hold every foreground class"
        for (outer_name, outer), (inner_name, inner) in zip(chain, chain[1:], strict=False):
            if why is None and not (inner < outer and len(outer - inner) == 1):
                why = f"region {inner_name} must lie inside {outer_name} and leave exactly one class of it out"
        if why is None and len(chain[-1][1]) != 1:
            why = f"the innermost region {chain[-1][0]} must be a single class"
        if why is not None:
            raise Vox2VoxError(
                f"label convention {self.name!r}: its regions {sorted(regions)} do not nest into a chain "
                f"({why}); use generator.output=classes"
            )
        return tuple((name, tuple(sorted(classes))) for name, classes in chain)

    def to_json(self) -> dict:
        """A JSON-serialisable dict accepted back by :func:`get_convention`."""
        return {
            "name": self.name,
            "values": {str(v): n for v, n in zip(self.source_values, self.class_names, strict=True)},
            "regions": {k: list(v) for k, v in self.regions.items()},
            "extra_map": {str(k): v for k, v in self.extra_map.items()},
            **({"ignore": self.ignore} if self.ignore is not None else {}),
        }


#: A float label map is read as integers when every value is this close to one: label files saved
#: as float are common (0.0/1.0, or 0.99999997 after resampling); anything further off is an image
#: or probabilities, not a label map.
LABEL_ATOL = 1e-4


def round_label_map(label: np.ndarray) -> np.ndarray | None:
    """A float label map rounded to the nearest integers (dtype kept), or None when a value is not
    finite or not within :data:`LABEL_ATOL` of an integer. Other dtypes come back unchanged.

    The one rule for float labels: training, ``vox2vox dataset`` and ``evaluate`` all use it.
    """
    if label.dtype.kind != "f":
        return label
    rounded = np.rint(label)
    if not np.allclose(label, rounded, atol=LABEL_ATOL) or not np.all(np.isfinite(label)):
        return None
    return rounded
#: BraTS 2017-21 values (1 necrotic core, 2 oedema, 4 enhancing tumour) and their regions: a label
#: set of exactly these values, 4 among them, is BraTS's whatever the files are called (no other
#: common label set skips 3).
BRATS_VALUES: tuple[int, ...] = (0, 1, 2, 4)
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}

#: Name of the region that joins every foreground label of a multi-label set.
FOREGROUND = "foreground"


def scoring_regions_for(convention: LabelConvention) -> dict[str, tuple[int, ...]]:
    """Which regions a label set is scored on: the one rule for evaluate, validation and the report.

    A convention that declares regions (BraTS WT/TC/ET, binary "foreground") is scored on them, values
    it folds into a class (``extra_map``) counting where that class does. An
    inferred convention whose values are BraTS 2017-21's (:data:`BRATS_VALUES`, 4 present) gets the
    BraTS regions. Any other label set: one region per foreground label (named by class) and, with two
    or more labels, their union "foreground"; a single-label set has just that one region.
    """
    if convention.regions:
        # Values folded into a class on reading (BraTS 2015's 3 -> 1) belong to that class's regions.
        return {name: tuple(sorted(set(values) | {src for src, dst in convention.extra_map.items() if dst in values}))
                for name, values in convention.regions.items()}
    foreground = tuple(v for v in convention.source_values if v != convention.source_values[0])
    if convention.name == "classes" and looks_like_brats(foreground):
        return dict(BRATS_REGIONS)
    # An inferred convention's class names (class_<v>) say nothing: regions are named label_<v>.
    names = {} if convention.name == "classes" else dict(zip(convention.source_values, convention.class_names, strict=True))
    return per_label_regions(foreground, {v: names[v] for v in foreground if v in names})


def looks_like_brats(values: Iterable[int]) -> bool:
    """Whether label values (background optional) are BraTS 2017-21's: a subset of 0/1/2/4 holding 4."""
    present = {int(v) for v in values} - {0}
    return 4 in present and present <= set(BRATS_VALUES) and len(present) >= 2


def per_label_regions(values: Iterable[int], names: Mapping[int, str] | None = None) -> dict[str, tuple[int, ...]]:
    """One region per non-zero value (named ``names[v]``, else ``label_<v>``), plus their union
    :data:`FOREGROUND` when there are two or more; a single unnamed label is the foreground itself."""
    present = sorted({int(v) for v in values} - {0})
    names = names or {}
    if len(present) == 1 and present[0] not in names:
        return {FOREGROUND: (present[0],)}
    regions = {names.get(v, f"label_{v}"): (v,) for v in present}
    if len(present) >= 2 and FOREGROUND not in regions:
        regions[FOREGROUND] = tuple(present)
    return regions


#: Class index of voxels carrying a convention's ignore label (excluded from loss and metrics).
IGNORE_INDEX = -1

#: Most classes a convention inferred from the data may have; more needs a declared convention.
MAX_INFERRED_CLASSES = 64


def infer_convention(values: set[int] | list[int], *, where: str | Path,
                     max_classes: int = MAX_INFERRED_CLASSES) -> tuple[LabelConvention, str | None]:
    """A convention from the label values present across a dataset, and a note for the user (or None).

    Values keep their order and become contiguous classes (0, 1, 5 -> classes 0, 1, 2; written back
    as 0, 1, 5); 0 is background even when absent. A 0/255 mask is binary (255 = foreground, with a
    note). More than ``max_classes`` distinct values is refused: declare a convention instead.
    """
    present = sorted({int(v) for v in values})
    if present and present[0] < 0:
        raise Vox2VoxError(f"{where}: negative label values ({present[0]}); give a label convention")
    if set(present) <= {0, 255} and 255 in present:
        note = f"{where}: label maps hold only 0 and 255: read as a binary mask (255 = foreground)"
        return LabelConvention(name="binary-255", source_values=(0, 255), class_names=("background", "foreground"),
                               regions={"foreground": (255,)}), note
    classes = sorted(set(present) | {0})
    if len(classes) > max_classes:
        raise Vox2VoxError(
            f"{where}: label maps hold {len(classes)} distinct values (largest {classes[-1]}), more than "
            f"{max_classes} classes; is a label an image? if not, declare the labels (data.convention / "
            "--convention with a .json value map)"
        )
    if len(classes) < 2:
        classes = [0, 1]  # all background: still a binary problem
    note = None
    if classes != list(range(len(classes))):
        note = (f"{where}: label values {classes} are not contiguous: trained as classes 0..{len(classes) - 1} "
                "and written back as the original values")
    return LabelConvention(
        name="classes", source_values=tuple(classes), class_names=tuple(f"class_{v}" for v in classes),
    ), note


_BRATS_NAMES = ("background", "necrotic/non-enhancing core", "oedema", "enhancing tumour")

#: Built-in conventions, by the names users type.
CONVENTIONS: dict[str, LabelConvention] = {
    "brats": LabelConvention(
        name="brats",
        source_values=(0, 1, 2, 4),
        class_names=_BRATS_NAMES,
        regions=dict(BRATS_REGIONS),
    ),
    # BraTS 2013-2015: 3 = non-enhancing core, merged into 1 as the 2017+ challenges did.
    "brats2015": LabelConvention(
        name="brats2015",
        source_values=(0, 1, 2, 4),
        class_names=_BRATS_NAMES,
        regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
        extra_map={3: 1},
    ),
    # BraTS 2023+: enhancing tumour is written as 3.
    "brats2023": LabelConvention(
        name="brats2023",
        source_values=(0, 1, 2, 3),
        class_names=("background", "non-enhancing tumour core", "surrounding FLAIR hyperintensity",
                     "enhancing tumour"),
        regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
    ),
    # MSD Task01_BrainTumour dataset.json: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.
    "msd-brain": LabelConvention(
        name="msd-brain",
        source_values=(0, 1, 2, 3),
        class_names=("background", "edema", "non-enhancing tumor", "enhancing tumour"),
        regions={"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
    ),
    "binary": LabelConvention(
        name="binary",
        source_values=(0, 1),
        class_names=("background", "foreground"),
        regions={"foreground": (1,)},
    ),
}
CONVENTIONS["brats2018"] = CONVENTIONS["brats"]


def get_convention(spec: str | Mapping | LabelConvention) -> LabelConvention:
    """A label convention from a built-in name or a custom dict.

    Names: ``brats`` (2018-21, 0/1/2/4), ``brats2015`` (3 folded into 1), ``brats2023`` (ET = 3),
    ``msd-brain``, ``binary`` (0/1, float 0.0/1.0 accepted). A custom dict::

        {"name": "tumour-vs-rest", "values": {"0": "background", "1": "tumour"},
         "extra_map": {"2": 1, "4": 1}, "regions": {"tumour": [1]}}

    A string ending in ``.json`` names a file holding such a dict, a dataset.json (its ``labels``),
    or a plain ``{"1": "spleen", ...}`` class map (TotalSegmentator); 0 is background if unnamed.

    ``values`` maps on-disk value -> class name (classes follow the order of increasing value);
    ``extra_map`` folds further on-disk values into one of ``values`` (here: merge all tumour labels).
    A dict ``{"labels": {"background": 0, ...}}`` as in MSD/nnU-Net dataset.json also works.
    """
    if isinstance(spec, LabelConvention):
        return spec
    if isinstance(spec, str) and spec.strip().lower().endswith(".json"):
        return _convention_from_file(Path(spec.strip()))
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key not in CONVENTIONS:
            raise Vox2VoxError(
                f"label convention {spec!r} is unknown; use one of {sorted(CONVENTIONS)} or a "
                "custom value map"
            )
        return CONVENTIONS[key]
    if not isinstance(spec, Mapping):
        raise Vox2VoxError(f"label convention must be a name or a dict, got {type(spec).__name__}")
    try:
        if "values" in spec:
            pairs = sorted((int(v), str(n)) for v, n in dict(spec["values"]).items())
        elif "labels" in spec:
            pairs = _pairs_from_dataset_json(dict(spec["labels"]))
        else:
            raise Vox2VoxError(
                "custom label convention needs a 'values' map (value -> class name)"
            )
        extra = {int(k): int(v) for k, v in dict(spec.get("extra_map", {})).items()}
        regions = {str(k): tuple(int(x) for x in v) for k, v in dict(spec.get("regions", {})).items()}
        ignore = spec.get("ignore")
        if isinstance(ignore, bool) or (ignore is not None and not isinstance(ignore, int | str)):
            raise ValueError(f"ignore={ignore!r} is not a label value")
        ignore = None if ignore is None else int(ignore)
    except (TypeError, ValueError, AttributeError) as err:
        raise Vox2VoxError(f"custom label convention: malformed ({err}); see get_convention") from err
    # nnU-Net v2 declares its ignore label as a class named "ignore" in dataset.json.
    named = [v for v, n in pairs if n.strip().lower() == "ignore"]
    if named and ignore is None:
        ignore = named[0]
        pairs = [(v, n) for v, n in pairs if v != ignore]
    return LabelConvention(
        name=str(spec.get("name", "custom")),
        source_values=tuple(v for v, _ in pairs),
        class_names=tuple(n for _, n in pairs),
        regions=regions,
        extra_map=extra,
        ignore=ignore,
    )


def _pairs_from_dataset_json(labels: dict) -> list[tuple[int, str]]:
    """(value, name) pairs from a dataset.json ``labels`` block, either direction of the map.

    MSD writes ``{"0": "background", ...}``; nnU-Net v2 writes ``{"background": 0, ...}`` (region
    tuples in v2 region-based training are not class values and are rejected here).
    """
    pairs = []
    for key, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise Vox2VoxError(
                "dataset.json uses region-based labels; give a custom 'values' map instead"
            )
        if str(key).lstrip("-").isdigit():
            pairs.append((int(key), str(value)))
        else:
            pairs.append((int(value), str(key)))
    return sorted(pairs)


def _convention_from_file(path: Path) -> LabelConvention:
    """A convention from a JSON file: a custom dict, a dataset.json, or a value -> name class map."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise Vox2VoxError(f"{path}: label convention file not found; check the path") from err
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise Vox2VoxError(f"{path}: not a readable JSON label map ({err})") from err
    if not isinstance(data, dict):
        raise Vox2VoxError(f"{path}: expected a JSON object mapping label values to names")
    if "values" in data or "labels" in data:
        spec = dict(data)
    else:
        spec = {"values": data}
    values = dict(spec.get("values", {}))
    if values and "0" not in values and 0 not in values:
        values = {"0": "background", **values}
        spec["values"] = values
    spec.setdefault("name", path.stem)
    try:
        return get_convention(spec)
    except Vox2VoxError as err:
        raise Vox2VoxError(f"{path}: {err}") from err


#: What ``predict`` writes beside its label maps: the label convention of the model that wrote them,
#: so ``evaluate`` scores the regions of that label set when the truth declares none.
PREDICTION_RECORD = "labels.json"


def write_prediction_record(folder: Path, convention: LabelConvention) -> Path:
    """Record ``convention`` in a prediction folder (:data:`PREDICTION_RECORD`), atomically."""
    path = Path(folder) / PREDICTION_RECORD
    atomic_write_text(path, json.dumps({"written_by": "vox2vox predict", "label_convention": convention.to_json()},
                                       indent=2) + "\n")
    return path


def read_prediction_record(folder: Path) -> LabelConvention | None:
    """The convention recorded in a prediction folder, or None when it records none."""
    path = Path(folder) / PREDICTION_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise Vox2VoxError(f"{path}: unreadable label record ({err}); delete it or write the predictions again") from err
    if not isinstance(data, dict) or data.get("written_by") != "vox2vox predict":
        return None  # someone else's labels.json: not ours to read
    try:
        return get_convention(data["label_convention"])
    except (KeyError, Vox2VoxError) as err:
        raise Vox2VoxError(f"{path}: malformed label record ({err}); delete it or write the predictions again") from err
