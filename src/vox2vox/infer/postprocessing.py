"""Post-processing of predicted label maps: small enhancing tumour and stray components.

Both steps work on label maps in SOURCE values (what is written to disk, e.g. BraTS 0/1/2/4) on
the input's grid, so voxel counts are counts of the user's voxels.

- **Small enhancing tumour -> necrotic core.** BraTS scores a case with no enhancing tumour in the
  ground truth as Dice 0 for ET if the prediction has even one ET voxel (docs/method.md, "Scoring
  (BraTS conventions)"), so top entries (Isensee et al. 2018; nnU-Net for BraTS 2020) relabel predicted
  ET below a volume threshold as necrotic/non-enhancing core: the voxels stay in the tumour core
  (TC and WT scores are unchanged) and only the ET call is withdrawn. Per connected component
  (default) or for the whole case's ET volume (Isensee's variant).
- **Largest connected component** per class or per region (nnU-Net's
  ``remove_all_but_largest_component``): voxels outside the largest component become background.

Connectivity is 26-neighbour (faces, edges and corners: ``scipy.ndimage.generate_binary_structure
(3, 3)``) by default, 6-neighbour (faces only) on request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from vox2vox.data.labels import LabelConvention
from vox2vox.errors import Vox2VoxError
from vox2vox.model.outputs import check_threshold

Connectivity = Literal[6, 26]
ComponentScope = Literal["component", "total"]
LargestPer = Literal["off", "class", "region"]


@dataclass(frozen=True)
class PostprocessConfig:
    """Which post-processing steps :func:`postprocess` applies (all off by default).

    min_et_voxels: enhancing tumour smaller than this many voxels becomes necrotic core (0: off).
    et_scope: ``"component"`` judges each connected ET component on its own; ``"total"`` judges
        the case's whole ET volume (all or nothing).
    largest_component: ``"class"`` keeps the largest component of each foreground label value,
        ``"region"`` of each evaluation region of the convention (BraTS WT, TC, ET; nested regions
        are processed from the first listed), ``"off"`` keeps everything.
    connectivity: 26 (faces, edges, corners) or 6 (faces only) neighbours form a component.
    foreground_threshold: the decision rule that makes the label map these steps clean
        (:meth:`vox2vox.model.outputs.OutputHead.to_classes`): None for argmax, else the foreground
        probability a voxel needs. It acts before the steps above, so ``active`` leaves it out.
    """

    min_et_voxels: int = 0
    et_scope: ComponentScope = "component"
    largest_component: LargestPer = "off"
    connectivity: Connectivity = 26
    foreground_threshold: float | None = None

    def __post_init__(self) -> None:
        check_threshold(self.foreground_threshold)
        if not isinstance(self.min_et_voxels, int) or self.min_et_voxels < 0:
            raise Vox2VoxError(f"min_et_voxels={self.min_et_voxels!r}: must be an integer >= 0")
        if self.et_scope not in ("component", "total"):
            raise Vox2VoxError(f"et_scope={self.et_scope!r}: choose component or total")
        if self.largest_component not in ("off", "class", "region"):
            raise Vox2VoxError(f"largest_component={self.largest_component!r}: choose off, class or region")
        if self.connectivity not in (6, 26):
            raise Vox2VoxError(f"connectivity={self.connectivity!r}: choose 6 or 26")

    @property
    def active(self) -> bool:
        """Whether any step is switched on."""
        return self.min_et_voxels > 0 or self.largest_component != "off"


def _structure(connectivity: Connectivity) -> np.ndarray:
    # rank 3; connectivity 1 = faces (6 neighbours), 3 = faces + edges + corners (26).
    return ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)


def enhancing_and_core_values(convention: LabelConvention) -> tuple[int, int]:
    """The on-disk values of enhancing tumour and of the core without it, from the regions.

    BraTS 2018-21: (4, 1); BraTS 2023: (3, 1); MSD brain: (3, 2). Needs one-value ``ET`` and a
    ``TC`` region that adds exactly one more value.
    """
    et = convention.regions.get("ET")
    tc = convention.regions.get("TC")
    if not et or not tc or len(et) != 1 or len(set(tc) - set(et)) != 1:
        raise Vox2VoxError(
            f"label convention {convention.name!r}: has no enhancing-tumour (ET) and tumour-core "
            "(TC) regions; --min-et-voxels needs a BraTS-like convention (brats, brats2023, msd-brain)"
        )
    (core,) = set(tc) - set(et)
    return int(et[0]), int(core)


def relabel_small_enhancing(
    labels: np.ndarray,
    *,
    et_value: int,
    ncr_value: int,
    min_voxels: int,
    scope: ComponentScope = "component",
    connectivity: Connectivity = 26,
) -> np.ndarray:
    """Relabel enhancing tumour smaller than ``min_voxels`` voxels as necrotic core.

    ``labels``: ``(X, Y, Z)`` integer label map in source values. Returns a new array of the same
    shape and dtype; voxels equal to ``et_value`` in a component (``scope="component"``) or a case
    (``scope="total"``) of fewer than ``min_voxels`` voxels become ``ncr_value``.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    et = labels == et_value
    if min_voxels <= 0 or not et.any():
        return out
    if scope == "total":
        if int(et.sum()) < min_voxels:
            out[et] = ncr_value
        return out
    components, n = ndimage.label(et, structure=_structure(connectivity))
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    small = sizes < min_voxels
    small[0] = False  # index 0 is "not enhancing"
    out[small[components]] = ncr_value
    return out


def largest_component_mask(mask: np.ndarray, *, connectivity: Connectivity = 26) -> np.ndarray:
    """Boolean ``mask`` restricted to its largest connected component (ties: the lowest label)."""
    components, n = ndimage.label(mask, structure=_structure(connectivity))
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_component(
    labels: np.ndarray,
    *,
    groups: Mapping[str, Sequence[int]],
    background: int = 0,
    connectivity: Connectivity = 26,
) -> np.ndarray:
    """Keep only the largest connected component of each group of label values.

    ``labels``: ``(X, Y, Z)`` integer label map. ``groups`` maps a name to the values forming one
    mask (a class: ``{"oedema": [2]}``; a region: ``{"WT": [1, 2, 4]}``), processed in order; the
    voxels of a group outside its largest component are set to ``background``. Returns a new array.
    """
    out = np.asarray(labels).copy()
    for values in groups.values():
        mask = np.isin(out, list(values))
        if not mask.any():
            continue
        out[mask & ~largest_component_mask(mask, connectivity=connectivity)] = background
    return out


def check_postprocess(config: PostprocessConfig, convention: LabelConvention) -> None:
    """Raise :class:`Vox2VoxError` if ``config`` asks for something ``convention`` cannot do."""
    if config.min_et_voxels > 0:
        enhancing_and_core_values(convention)
    if config.largest_component == "region" and not convention.regions:
        raise Vox2VoxError(
            f"label convention {convention.name!r}: defines no regions; use --largest-component class"
        )


def postprocess(
    labels: np.ndarray, *, config: PostprocessConfig, convention: LabelConvention
) -> np.ndarray:
    """Apply the steps of ``config`` to a ``(X, Y, Z)`` label map in ``convention``'s source values.

    Order: the largest component first (a stray blob is removed outright rather than turned into
    necrosis), then small enhancing tumour -> necrotic core.
    """
    check_postprocess(config, convention)
    out = np.asarray(labels)
    if config.largest_component != "off":
        background = convention.source_values[0]
        if config.largest_component == "class":
            groups = {name: (value,) for name, value in
                      zip(convention.class_names[1:], convention.source_values[1:], strict=True)}
        else:
            groups = dict(convention.regions)
        out = keep_largest_component(out, groups=groups, background=background,
                                     connectivity=config.connectivity)
    if config.min_et_voxels > 0:
        et_value, ncr_value = enhancing_and_core_values(convention)
        out = relabel_small_enhancing(out, et_value=et_value, ncr_value=ncr_value,
                                      min_voxels=config.min_et_voxels, scope=config.et_scope,
                                      connectivity=config.connectivity)
    return out
