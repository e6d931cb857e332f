"""Label conventions: value <-> class maps, folding, regions, errors."""

from __future__ import annotations

import numpy as np
import pytest

from vox2vox.data.io import read_volume
from vox2vox.data.labels import get_convention
from vox2vox.errors import Vox2VoxError


def test_brats_maps_4_to_class_3_and_back():
    conv = get_convention("brats")
    label = np.array([0, 1, 2, 4, 4], dtype=np.uint8)
    classes = conv.to_classes(label)
    assert classes.dtype == np.int64 and classes.tolist() == [0, 1, 2, 3, 3]
    back = conv.to_source(classes)
    assert back.dtype == np.uint8 and back.tolist() == label.tolist()
    assert conv.n_classes == 4 and conv.regions["TC"] == (1, 4)


def test_unknown_values_name_the_file_and_values():
    with pytest.raises(Vox2VoxError, match=r"seg.nii.gz: label values 3, 7 .*'brats'"):
        get_convention("brats").to_classes(np.array([0, 3, 7]), path="seg.nii.gz")


def test_binary_accepts_float_zero_one_and_rejects_images():
    conv = get_convention("binary")
    assert conv.to_classes(np.array([0.0, 1.0, 0.99999997])).tolist() == [0, 1, 1]
    with pytest.raises(Vox2VoxError, match="non-integer"):
        conv.to_classes(np.array([0.0, 0.4]))


def test_brats2023_and_msd():
    assert get_convention("brats2023").to_classes(np.array([0, 3])).tolist() == [0, 3]
    assert get_convention("brats2023").regions["ET"] == (3,)
    assert get_convention("msd-brain").regions["TC"] == (2, 3)


def test_custom_merge_all_tumour_labels():
    conv = get_convention(
        {"name": "tumour", "values": {"0": "background", "1": "tumour"}, "extra_map": {"2": 1, "4": 1}}
    )
    assert conv.to_classes(np.array([0, 1, 2, 4])).tolist() == [0, 1, 1, 1]
    assert conv.to_source(np.array([0, 1])).tolist() == [0, 1]
    assert get_convention(conv.to_json()) == conv


def test_dataset_json_labels_both_directions():
    msd = get_convention({"labels": {"0": "background", "1": "liver", "2": "cancer"}})
    nnunet = get_convention({"labels": {"background": 0, "liver": 1, "cancer": 2}})
    assert msd.source_values == nnunet.source_values == (0, 1, 2)
    assert msd.class_names == ("background", "liver", "cancer")


def test_bad_specs():
    with pytest.raises(Vox2VoxError, match="unknown"):
        get_convention("brats2099")
    with pytest.raises(Vox2VoxError, match="not one of the values"):
        get_convention({"values": {"0": "bg", "1": "fg"}, "extra_map": {"2": 5}})


def test_brats2015_label_map_converts_to_brats_convention(shared_data):
    path = shared_data / "brats2015-deepmedic" / "brats_2013_pat0005_1" / "OTMultiClass.nii.gz"
    raw, _ = read_volume(path)
    classes = get_convention("brats2015").to_classes(raw, path=path)
    source = get_convention("brats").to_source(classes)
    # MANIFEST.tsv counts: 0:8847318 1:23030 2:35416 3:3882 4:18354 -> 3 folds into 1.
    values, counts = np.unique(source, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {
        0: 8847318, 1: 23030 + 3882, 2: 35416, 4: 18354
    }
    with pytest.raises(Vox2VoxError, match="label values 3 "):
        get_convention("brats").to_classes(raw, path=path)


# ---- issue 13: conventions inferred from the data, large values, the ignore label -----------------
def test_to_classes_costs_the_voxels_not_the_largest_value():
    import tracemalloc

    from vox2vox.data.labels import LabelConvention

    conv = LabelConvention("big", (0, 1, 2**40), ("bg", "a", "b"))
    label = np.zeros((8, 8, 8), np.int64)
    label[0, 0, 0], label[1, 1, 1] = 1, 2**40
    tracemalloc.start()
    classes = conv.to_classes(label)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000
    assert classes[0, 0, 0] == 1 and classes[1, 1, 1] == 2 and classes.sum() == 3
    assert conv.to_source(classes)[1, 1, 1] == 2**40


def test_infer_convention_bounds_and_binary_255():
    from vox2vox.data.labels import infer_convention

    conv, note = infer_convention({0, 255}, where="data")
    assert conv.source_values == (0, 255) and "255" in note
    conv, note = infer_convention({0, 1, 2}, where="data")
    assert conv.source_values == (0, 1, 2) and note is None
    conv, note = infer_convention({1, 5}, where="data")
    assert conv.source_values == (0, 1, 5) and "not contiguous" in note
    with pytest.raises(Vox2VoxError, match="65 distinct"):
        infer_convention(set(range(65)), where="data")
    with pytest.raises(Vox2VoxError, match="negative"):
        infer_convention({-1, 0}, where="data")


def test_ignore_label_maps_to_ignore_index_and_round_trips():
    from vox2vox.data.labels import IGNORE_INDEX

    conv = get_convention({"values": {"0": "bg", "1": "fg"}, "ignore": 255})
    classes = conv.to_classes(np.array([0, 1, 255]))
    assert classes.tolist() == [0, 1, IGNORE_INDEX]
    assert conv.to_source(classes).tolist() == [0, 1, 255]
    assert get_convention(conv.to_json()).ignore == 255
    # nnU-Net v2 dataset.json names its ignore label "ignore".
    nnunet = get_convention({"labels": {"background": 0, "tumour": 1, "ignore": 2}})
    assert nnunet.ignore == 2 and nnunet.source_values == (0, 1)
    with pytest.raises(Vox2VoxError, match="ignore"):
        get_convention({"values": {"0": "bg", "1": "fg"}, "ignore": 1})


def test_scoring_regions_are_owned_by_the_label_set():
    from vox2vox.data.labels import get_convention, infer_convention, scoring_regions_for

    assert scoring_regions_for(get_convention("brats")) == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert get_convention("brats2015").scoring_regions()["TC"] == (1, 3, 4)  # its 3 folds into 1
    assert get_convention("binary").scoring_regions() == {"foreground": (1,)}
    # Inferred from values: BraTS 0/1/2/4 is recognised, 0/1 is one region, others per label + union.
    assert infer_convention({0, 1, 2, 4}, where="x")[0].scoring_regions() == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert infer_convention({0, 1}, where="x")[0].scoring_regions() == {"foreground": (1,)}
    assert infer_convention({0, 1, 5}, where="x")[0].scoring_regions() == {
        "label_1": (1,), "label_5": (5,), "foreground": (1, 5)}
    organs = get_convention({"values": {"0": "background", "1": "liver", "2": "spleen"}})
    assert organs.scoring_regions() == {"liver": (1,), "spleen": (2,), "foreground": (1, 2)}
    # Validation scores the same regions (region_masks is what train's validator calls).
    masks = organs.region_masks(np.array([[[0, 1, 2]]]))
    assert list(masks) == ["liver", "spleen", "foreground"] and masks["foreground"].sum() == 2
