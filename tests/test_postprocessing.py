"""Post-processing on small synthetic label maps: small ET -> necrotic core, largest component."""

from __future__ import annotations

import numpy as np
import pytest

from vox2vox.data.labels import get_convention
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.postprocessing import (
    PostprocessConfig,
    enhancing_and_core_values,
    keep_largest_component,
    postprocess,
    relabel_small_enhancing,
)


def brats_case() -> np.ndarray:
    """12^3 BraTS map: oedema block with a 27-voxel ET blob, a 2-voxel ET speck and necrosis."""
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:8, 1:8, 1:8] = 2
    labels[2:5, 2:5, 2:5] = 4  # 27 voxels of enhancing tumour
    labels[6, 6, 5:7] = 4  # a 2-voxel speck, not touching the blob
    labels[5, 2, 2] = 1
    return labels


@pytest.mark.parametrize(("name", "expected"), [("brats", (4, 1)), ("brats2023", (3, 1)), ("msd-brain", (3, 2))])
def test_enhancing_and_core_values_follow_the_convention(name, expected):
    assert enhancing_and_core_values(get_convention(name)) == expected


def test_enhancing_needs_a_brats_like_convention():
    with pytest.raises(Vox2VoxError, match="ET"):
        enhancing_and_core_values(get_convention("binary"))


def test_small_enhancing_components_become_necrotic_core():
    labels = brats_case()
    out = relabel_small_enhancing(labels, et_value=4, ncr_value=1, min_voxels=5)
    assert out.dtype == labels.dtype and out is not labels
    assert out[6, 6, 5] == 1 and out[6, 6, 6] == 1  # the speck
    assert (out == 4).sum() == 27  # the blob stays
    # Only ET voxels change: oedema and background are untouched, TC and WT are unchanged.
    changed = out != labels
    assert np.all(labels[changed] == 4)
    assert np.array_equal(np.isin(out, (1, 4)), np.isin(labels, (1, 4)))


def test_threshold_is_strict_and_zero_is_off():
    labels = brats_case()
    assert (relabel_small_enhancing(labels, et_value=4, ncr_value=1, min_voxels=2) == 4).sum() == 29
    assert (relabel_small_enhancing(labels, et_value=4, ncr_value=1, min_voxels=3) == 4).sum() == 27
    assert np.array_equal(relabel_small_enhancing(labels, et_value=4, ncr_value=1, min_voxels=0), labels)


def test_total_scope_judges_the_whole_case():
    labels = brats_case()  # 29 ET voxels in all
    kept = relabel_small_enhancing(labels, et_value=4, ncr_value=1, min_voxels=29, scope="total")
    assert (kept == 4).sum() == 29
    gone = relabel_small_enhancing(labels, et_value=4, ncr_value=1, min_voxels=30, scope="total")
    assert (gone == 4).sum() == 0 and (gone == 1).sum() == 30


def test_connectivity_decides_what_touches():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1, 1, 1] = 4
    labels[2, 2, 2] = 4  # touches the first only at a corner
    # 26-connected: one component of 2 voxels; 6-connected: two of 1.
    assert (relabel_small_enhancing(labels, et_value=4, ncr_value=1, min_voxels=2) == 4).sum() == 2
    assert (relabel_small_enhancing(labels, et_value=4, ncr_value=1, min_voxels=2, connectivity=6) == 4).sum() == 0


def test_largest_component_per_class():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:3, 0:3, 0:3] = 1  # 27 voxels
    labels[7:9, 7:9, 7:9] = 1  # 8 voxels, apart
    labels[5, 0, 0] = 2  # a lone class-2 voxel is its own largest component
    out = keep_largest_component(labels, groups={"a": [1], "b": [2]})
    assert (out == 1).sum() == 27 and out[8, 8, 8] == 0
    assert out[5, 0, 0] == 2


def test_postprocess_regions_and_order():
    convention = get_convention("brats")
    labels = brats_case()
    labels[10:12, 10:12, 10:12] = 2  # a stray oedema blob: removed by the WT region step
    out = postprocess(labels, config=PostprocessConfig(largest_component="region", min_et_voxels=5), convention=convention)
    assert np.all(out[10:12, 10:12, 10:12] == 0)
    # The speck belongs to the largest WT component but is its own small ET component: it is
    # removed by the ET region step (largest ET component) before the ET-size rule sees it.
    assert out[6, 6, 5] == 0
    assert (out == 4).sum() == 27
    nothing = postprocess(labels, config=PostprocessConfig(), convention=convention)
    assert np.array_equal(nothing, labels)


def test_config_checks():
    with pytest.raises(Vox2VoxError, match="min_et_voxels"):
        PostprocessConfig(min_et_voxels=-1)
    with pytest.raises(Vox2VoxError, match="connectivity"):
        PostprocessConfig(connectivity=8)  # type: ignore[arg-type]
    with pytest.raises(Vox2VoxError, match="no regions"):
        postprocess(np.zeros((3, 3, 3), np.uint8), config=PostprocessConfig(largest_component="region"),
                    convention=get_convention({"values": {"0": "bg", "1": "fg"}}))
