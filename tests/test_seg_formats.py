"""``predict --output-format dicom-seg | seg-nrrd``: files other tools open as segmentations.

The label maps come from a band "network" whose prediction is known voxel by voxel (class c where
the raw intensity falls in band c), so each written file is checked against the input's own
voxels read independently: DICOM SEG frames against the pixels of the slice file each frame
references (SimpleITK reads the slice alone), and ``.seg.nrrd`` voxels against the NIfTI array.
Files are read back with pydicom/highdicom and pynrrd/SimpleITK/slicerio, not with the writers' code.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
import torch

from helpers import assert_nothing_written, assert_user_error, cli, make_model, save_nifti
from vox2vox import __version__
from vox2vox.config import Config
from vox2vox.data import seg_formats
from vox2vox.data.colours import colours_for
from vox2vox.data.dicom import allow_nonuniform
from vox2vox.data.io import Geometry, read_volume
from vox2vox.data.labels import get_convention
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import predict_dataset
from vox2vox.infer.loaded import LoadedModel
from vox2vox.infer.options import PredictionOptions
from vox2vox.model.record import ModelRecord
from vox2vox.report.evaluation import evaluate_folder

SERIES = Path("ct-totalsegmentator") / "dicom_case" / "example_ct_dicom"
SPINE_T2 = Path("mri-spinalcord") / "t2" / "t2.nii.gz"
#: Values 0/1/5 (5 is segment 2: values and segment numbers differ on purpose).
CT_BANDS = {"name": "ct-bands", "values": {"0": "background", "1": "soft tissue", "5": "bone"}}
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class BandNet(torch.nn.Module):
    """Class c where ``edges[c-1] < x <= edges[c]`` (channel 0, raw intensities), as a softmax."""

    def __init__(self, edges: list[float]):
        super().__init__()
        self.edges = torch.tensor(edges, dtype=torch.float32)

        class _Cfg:
            size_multiple = 4

        self.config = _Cfg()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.bucketize(x[:, 0].contiguous(), self.edges.to(x.device))
        onehot = torch.nn.functional.one_hot(classes, len(self.edges) + 1).permute(0, 4, 1, 2, 3)
        return torch.softmax(onehot.float() * 1e4, dim=1)


def band_model(edges: list[float], convention) -> LoadedModel:
    # Raw intensities, no crop: the expected labels are the bands of the file's own voxels.
    k = len(edges) + 1
    config = Config().with_overrides(['preprocess.normalize="none"', "preprocess.crop_foreground=false",
                                      "preprocess.pad_multiple=4", "generator.in_channels=1",
                                      f"generator.n_classes={k}"])
    state = {"channels": ["image"], "convention": get_convention(convention).to_json()}
    return LoadedModel(BandNet(edges), config, ModelRecord.from_json(state, "bands"), Path("bands"))  # type: ignore[arg-type]


def expected_values(intensities: np.ndarray, edges: list[float], values: list[int]) -> np.ndarray:
    return np.asarray(values)[np.searchsorted(np.asarray(edges), intensities, side="left")]


@pytest.fixture(scope="module")
def series(shared_data, tmp_path_factory) -> tuple[Path, str, str]:
    """The shared CT series (anonymised: no study or series UIDs) with those two UIDs restored;
    the SOP instance UIDs stay empty in the datasets, as in the source (the file meta has them)."""
    source = shared_data / SERIES
    folder = tmp_path_factory.mktemp("dicom") / "series"
    folder.mkdir()
    study, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        assert not ds.get("StudyInstanceUID") and not ds.get("SOPInstanceUID")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.save_as(folder / path.name)
    return folder, study, series_uid


def _slice_pixels(path: Path) -> np.ndarray:
    """One slice file's pixels (rows, columns) in HU, read on its own."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]


@pytest.mark.slow
def test_dicom_seg_references_the_series_and_its_frames_sit_on_the_source_slices(series, tmp_path):
    folder, study, series_uid = series
    edges, values = [-200.0, 200.0], [0, 1, 5]
    model = band_model(edges, CT_BANDS)
    report = predict_dataset([model], folder, tmp_path / "seg", PredictionOptions(output_format="dicom-seg", progress=False))
    assert not report.failed and report.written == {"series": tmp_path / "seg" / "series.dcm"}
    nifti = predict_dataset([model], folder, tmp_path / "nii", PredictionOptions(progress=False)).written["series"]

    seg = pydicom.dcmread(report.written["series"])
    assert hd.seg.segread(report.written["series"]).number_of_segments == 2  # highdicom parses it as a SEG
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY" and seg.SoftwareVersions == __version__
    sources = {p.name: pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()}
    by_uid = {ds.file_meta.MediaStorageSOPInstanceUID: (name, ds) for name, ds in sources.items()}
    first = next(iter(sources.values()))
    assert seg.StudyInstanceUID == study and seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series_uid and seg.SeriesInstanceUID != series_uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(by_uid)

    # One segment per foreground class: name, colour as the report draws it, the algorithm.
    colours = colours_for([1, 5])
    for number, (value, name) in enumerate([(1, "soft tissue"), (5, "bone")], start=1):
        item = seg.SegmentSequence[number - 1]
        assert (item.SegmentNumber, item.SegmentLabel, item.SegmentAlgorithmType) == (number, name, "AUTOMATIC")
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("vox2vox", __version__)
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(item.RecommendedDisplayCIELabValue)).to_rgb()
        np.testing.assert_allclose(rgb, [255 * c for c in colours[value]], atol=2)

    # Every frame: on the slice it references (position), and equal to that slice's own bands.
    label_map = nib.load(nifti)
    inverse, data = np.linalg.inv(label_map.affine), np.asarray(label_map.dataobj)
    pixels, expected_pairs, seen_pairs = seg.pixel_array, set(), set()
    truth = {}
    for name in sources:
        truth[name] = expected_values(_slice_pixels(folder / name), edges, values)
        expected_pairs |= {(name, n) for n, v in ((1, 1), (2, 5)) if (truth[name] == v).any()}
    assert len(expected_pairs) > 20  # both classes on most slices: a real check, not an empty one
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        name, ds = by_uid[uid]
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in ds.ImagePositionPatient], atol=1e-3)
        value = values[number]
        np.testing.assert_array_equal(frame.astype(bool), truth[name] == value)
        # ... and equal to the NIfTI label map at those world positions.
        voxel = np.rint(inverse @ LPS @ np.append(position, 1.0)).astype(int)
        assert voxel[0] == 0 and voxel[1] == 0  # NIfTI i/j run along the DICOM columns/rows here
        np.testing.assert_array_equal(frame.astype(bool), data[:, :, voxel[2]].T == value)
        seen_pairs.add((name, number))
    assert seen_pairs == expected_pairs  # a frame for each slice and segment with voxels, no more


def test_dicom_seg_of_an_empty_prediction_is_valid_with_empty_segments(series, tmp_path):
    folder, _, series_uid = series
    report = predict_dataset([band_model([1e6, 2e6], CT_BANDS)], folder, tmp_path / "seg", PredictionOptions(output_format="dicom-seg", progress=False))
    assert report.empty == ["series"]
    path = report.written["series"]
    seg = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["soft tissue", "bone"]
    assert seg.NumberOfFrames == 2 * 20 and not seg.pixel_array.any()  # every frame kept, all empty
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert hd.seg.segread(path).number_of_segments == 2


def test_dicom_seg_of_nifti_input_is_refused_before_anything_is_written(tmp_path, capsys):
    image = save_nifti(tmp_path / "case.nii.gz", np.ones((8, 8, 8), np.float32))
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", make_model(tmp_path / "m.safetensors"),
                                 "--input", image, "--output", out, "--output-format", "dicom-seg", "--no-progress"),
                             image, "dicom-seg needs DICOM series input")
    assert "nifti or seg-nrrd" in line
    assert_nothing_written(out)


def test_dicom_seg_of_an_anonymised_series_is_refused_naming_the_missing_uid(shared_data, tmp_path, capsys):
    source = shared_data / SERIES
    out = tmp_path / "pred"
    assert_user_error(cli(capsys, "predict", "--model", make_model(tmp_path / "m.safetensors"), "--input", source,
                          "--output", out, "--output-format", "dicom-seg", "--no-progress"),
                      source, "has no StudyInstanceUID", "restore the UIDs")
    assert_nothing_written(out)


def test_missing_dicom_extra_is_one_line(monkeypatch):
    real = seg_formats.importlib.util.find_spec
    monkeypatch.setattr(seg_formats.importlib.util, "find_spec",
                        lambda name, *a: None if name == "highdicom" else real(name, *a))
    with pytest.raises(Vox2VoxError, match=r"pip install 'vox2vox\[dicom\]'"):
        seg_formats.check_output_format("dicom-seg")
    seg_formats.check_output_format("seg-nrrd")  # needs no extra


def test_seg_nrrd_reads_back_with_names_colours_values_and_the_input_geometry(shared_data, tmp_path):
    source = shared_data / SPINE_T2  # PSR: a real oblique-to-LPS voxel order
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32)
    # BraTS values 0/1/2/4; nothing is brighter than the last edge, so 'enhancing tumour' is empty.
    edges = [float(np.percentile(data, 50)), float(np.percentile(data, 90)), float(data.max()) + 1.0]
    report = predict_dataset([band_model(edges, "brats")], source, tmp_path / "pred", PredictionOptions(output_format="seg-nrrd", progress=False))
    path = report.written["t2"]
    assert path.name == "t2.seg.nrrd"
    voxels, header = nrrd.read(str(path))
    expected = expected_values(data, edges, [0, 1, 2, 4])
    np.testing.assert_array_equal(voxels, expected)  # the file's own voxel order, on its grid
    lps = LPS @ image.affine
    assert header["space"] == "left-posterior-superior" and header["kinds"] == ["domain"] * 3
    np.testing.assert_allclose(header["space directions"], lps[:3, :3].T, atol=1e-5)
    np.testing.assert_allclose(header["space origin"], lps[:3, 3], atol=1e-5)
    assert list(header["sizes"]) == list(image.shape)
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    colours = colours_for([1, 2, 4])
    names = {1: "necrotic/non-enhancing core", 2: "oedema", 4: "enhancing tumour"}
    ids = set()
    for index, value in enumerate((1, 2, 4)):
        def field(key: str, index: int = index) -> str:
            return header[f"Segment{index}_{key}"]

        assert (field("Name"), int(field("LabelValue")), int(field("Layer"))) == (names[value], value, 0)
        np.testing.assert_allclose([float(c) for c in field("Color").split()], colours[value], atol=1e-6)
        assert field("NameAutoGenerated") == "0" and field("ColorAutoGenerated") == "0"
        hit = np.argwhere(voxels == value)
        extent = [0, -1, 0, -1, 0, -1] if hit.size == 0 else [b for lo, hi in zip(hit.min(0), hit.max(0), strict=True)
                                                              for b in (int(lo), int(hi))]
        assert [int(v) for v in field("Extent").split()] == extent
        ids.add(field("ID"))
    assert len(ids) == 3 and "Segment3_Name" not in header
    assert (voxels == 4).sum() == 0 and (voxels == 1).sum() > 0 and (voxels == 2).sum() > 0
    # SimpleITK (ITK's reader, as 3D Slicer's) places it where the input lies.
    read = sitk.ReadImage(str(path))
    reference = sitk.ReadImage(str(source))
    np.testing.assert_allclose(read.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read.GetDirection(), reference.GetDirection(), atol=1e-5)
    assert read.GetMetaData("Segment1_Name") == "oedema"
    # slicerio, the 3D Slicer team's reader of .seg.nrrd outside Slicer, sees the same segmentation.
    parsed = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(parsed["ijkToLPS"], lps, atol=1e-5)
    np.testing.assert_array_equal(parsed["voxels"], expected)
    assert parsed["masterRepresentation"] == "Binary labelmap"
    assert [(s["name"], s["labelValue"], s["layer"], s["nameAutoGenerated"], s["colorAutoGenerated"])
            for s in parsed["segments"]] == [(names[v], v, 0, False, False) for v in (1, 2, 4)]
    for segment in parsed["segments"]:
        np.testing.assert_allclose(segment["color"], colours[segment["labelValue"]], atol=1e-6)
    # evaluate scores .seg.nrrd predictions: against the expected labels as truth, Dice 1.
    truth = tmp_path / "truth"
    save_nifti(truth / "t2.nii.gz", expected.astype(np.uint8), image.affine)
    result = evaluate_folder(tmp_path / "pred", truth, regions="labels", convention="brats")
    assert result.case_ids == ("t2",) and not result.missing
    dice = {row["region"]: row["dice"] for row in result.rows}
    assert dice and all(v == pytest.approx(1.0) for v in dice.values()), dice


def test_seg_nrrd_of_a_dicom_series_lies_on_the_series(series, tmp_path):
    folder, _, _ = series
    report = predict_dataset([band_model([-200.0, 200.0], CT_BANDS)], folder, tmp_path / "pred", PredictionOptions(output_format="seg-nrrd", progress=False))
    read = sitk.ReadImage(str(report.written["series"]))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reference = sitk.ReadImage(files)
    assert read.GetSize() == reference.GetSize()
    np.testing.assert_allclose(read.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), reference.GetDirection(), atol=1e-6)
    labels = sitk.GetArrayFromImage(read)  # (slices, rows, columns), as the series stacks
    hu = sitk.GetArrayFromImage(reference)
    np.testing.assert_array_equal(labels, expected_values(hu, [-200.0, 200.0], [0, 1, 5]))


def test_series_with_a_repeated_instance_uid_is_refused(series, tmp_path):
    folder, _, _ = series
    copy = tmp_path / "dup"
    copy.mkdir()
    files = sorted(folder.iterdir())
    for path in files:
        ds = pydicom.dcmread(path)
        if path == files[1]:  # the second slice claims the first one's identity
            ds.file_meta.MediaStorageSOPInstanceUID = pydicom.dcmread(files[0]).file_meta.MediaStorageSOPInstanceUID
        ds.save_as(copy / path.name)
    with pytest.raises(Vox2VoxError, match="two slices share one SOPInstanceUID"):
        seg_formats.read_dicom_source(copy)


def test_labels_off_the_series_grid_are_refused(series, tmp_path):
    folder, _, _ = series
    _, geometry = read_volume(folder)
    source = seg_formats.read_dicom_source(folder)
    shifted = geometry.source_affine.copy()
    shifted[:3, 3] += [5.0, 0.0, 0.0]  # five millimetres off in x
    moved = Geometry(geometry.affine, geometry.shape, shifted, geometry.source_shape)
    segments = seg_formats.segments_of(get_convention(CT_BANDS))
    labels = np.zeros(geometry.shape, np.uint8)
    with pytest.raises(Vox2VoxError, match="does not lie on the label map's grid"):
        seg_formats.write_dicom_seg(labels, moved, source, tmp_path / "x.dcm", segments)
    assert not list(tmp_path.glob("*.dcm"))


def _write_oblique_series(folder: Path, volume: np.ndarray) -> tuple[str, str]:
    """``volume`` ``(slices, rows, columns)`` int16 as an uncompressed CT series whose rows run
    obliquely through sagittal-ish planes (30 degrees about the x axis), files named against the
    slice order, without the optional Type 2 patient/study attributes; returns (study, series)."""
    folder.mkdir(parents=True)
    angle = np.deg2rad(30.0)
    row_dir = np.array([0.0, np.cos(angle), np.sin(angle)])  # along a row (increasing column)
    col_dir = np.array([0.0, -np.sin(angle), np.cos(angle)])  # down a column (increasing row)
    col_dir = np.cross(np.cross(row_dir, col_dir), row_dir)
    normal = np.cross(row_dir, col_dir)
    study, series, frame = (pydicom.uid.generate_uid() for _ in range(3))
    for k, plane in enumerate(volume):
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.SeriesNumber, ds.InstanceNumber = "CT", "p", "p", 3, k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([10.0, -20.0, 30.0]) + 2.5 * k * normal]
        ds.PixelSpacing, ds.SliceThickness = ["0.8", "1.2"], "2.5"  # between rows, between columns
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.PixelData = np.ascontiguousarray(plane, dtype="<i2").tobytes()
        ds.save_as(folder / f"slice_{len(volume) - k:03d}.dcm", enforce_file_format=True)
    return study, series


@pytest.mark.filterwarnings("error")  # nothing from highdicom about the source's one-part patient name
def test_dicom_seg_frames_follow_an_oblique_series_with_rectangular_slices(tmp_path):
    rng = np.random.default_rng(5)
    volume = rng.integers(-500, 500, size=(7, 12, 20)).astype(np.int16)  # 7 slices of 12 rows x 20 columns
    folder = tmp_path / "oblique"
    study, series_uid = _write_oblique_series(folder, volume)
    edges, values = [-100.0, 250.0], [0, 1, 5]
    report = predict_dataset([band_model(edges, CT_BANDS)], folder, tmp_path / "seg", PredictionOptions(output_format="dicom-seg", progress=False))
    assert not report.failed, report.failed
    seg = pydicom.dcmread(report.written["oblique"])
    assert seg.StudyInstanceUID == study and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    sources = {pydicom.dcmread(p).SOPInstanceUID: p for p in folder.iterdir()}
    pairs = set()
    for frame, group in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence, strict=True):
        path = sources[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        source = pydicom.dcmread(path)
        value = values[group.SegmentIdentificationSequence[0].ReferencedSegmentNumber]
        np.testing.assert_allclose([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-3)
        np.testing.assert_allclose([float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                                    .ImageOrientationPatient], [float(v) for v in source.ImageOrientationPatient],
                                   atol=1e-5)
        assert frame.shape == (12, 20)
        np.testing.assert_array_equal(frame.astype(bool), expected_values(source.pixel_array, edges, values) == value)
        pairs.add((path.name, value))
    assert len(pairs) == 7 * 2  # both classes on every slice of random intensities


@pytest.mark.slow
def test_dicom_seg_of_a_resampled_series_references_the_slices_it_has(series, tmp_path):
    folder, _, _ = series
    gappy = tmp_path / "gappy"
    gappy.mkdir()
    ordered = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                           .ImagePositionPatient[2]))
    kept = [p for i, p in enumerate(ordered) if i not in (8, 9)]  # a 6 mm gap in a 2 mm series
    for path in kept:
        (gappy / path.name).write_bytes(path.read_bytes())
    edges, values = [-200.0, 200.0], [0, 1, 5]
    with allow_nonuniform():
        report = predict_dataset([band_model(edges, CT_BANDS)], gappy, tmp_path / "seg", PredictionOptions(output_format="dicom-seg", progress=False))
    assert not report.failed, report.failed
    seg = pydicom.dcmread(report.written["gappy"])
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID: p for p in kept}
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(by_uid)
    # Kept slices lie on planes of the resampled grid, so each frame is its own slice's bands.
    for frame, group in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence, strict=True):
        path = by_uid[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        value = values[group.SegmentIdentificationSequence[0].ReferencedSegmentNumber]
        np.testing.assert_array_equal(frame.astype(bool), expected_values(_slice_pixels(path), edges, values) == value)
