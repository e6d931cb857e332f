"""One predictor (infer/predictor.py) built from typed options (infer/options.py)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_user_error, cli, make_model, save_nifti, translation_checkpoint
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import read_model
from vox2vox.infer.options import API_NAMES, CLI_NAMES, PredictionOptions
from vox2vox.infer.predictor import Predictor
from vox2vox.model.checkpoint import load_checkpoint, save_checkpoint


@pytest.mark.parametrize(("given", "api", "cli_flag"), [
    ({"threshold": 0.3}, "threshold=", "--threshold"),
    ({"save_probabilities": "npz"}, "save_probabilities=", "--save-probabilities"),
    ({"uncertainty": True}, "uncertainty=", "--save-uncertainty"),
    ({"missing": ("t1",)}, "missing=", "--missing"),
    ({"fill_missing": ("flair",)}, "fill_missing=", "--fill-missing"),
    ({"output_format": "seg-nrrd"}, "output_format=", "--output-format"),
])
def test_a_segmentation_option_is_refused_for_a_translation_as_its_caller_spells_it(given, api, cli_flag):
    options = PredictionOptions(**given)
    for names, spelled in ((API_NAMES, api), (CLI_NAMES, cli_flag)):
        with pytest.raises(Vox2VoxError, match=f"^m.onnx: a translation model; {spelled} applies to segmentation$"):
            options.refuse_segmentation_only("m.onnx", names)


def test_options_that_apply_to_a_translation_pass():
    PredictionOptions(tta=True, mode="whole", window=[64, 64, 64], amp="off", layout="brats",
                      progress=False).refuse_segmentation_only("m.onnx")
    assert PredictionOptions(window=[64, 64, 64], missing="t1").window == (64, 64, 64)
    assert PredictionOptions(missing="t1").missing == ("t1",)


def test_the_predictor_resolves_what_training_chose_unless_given(tmp_path):
    path = make_model(tmp_path / "m.safetensors")
    ckpt = load_checkpoint(path)
    ckpt.state["predict"] = {"tta": True, "foreground_threshold": 0.3, "largest_component": "class"}
    save_checkpoint(path, ckpt)
    model = read_model(path)
    chosen = Predictor([model])
    assert chosen.inference.tta_flips is True
    assert (chosen.postprocess.foreground_threshold, chosen.postprocess.largest_component) == (0.3, "class")
    given = Predictor([model], PredictionOptions(tta=False, threshold="argmax", largest_component="off"))
    assert given.inference.tta_flips is False
    assert (given.postprocess.foreground_threshold, given.postprocess.largest_component) == (None, "off")


def test_predict_refuses_a_segmentation_option_for_a_translation_model_before_any_case(tmp_path, capsys):
    model = translation_checkpoint(tmp_path / "t1_to_flair.safetensors")
    image = save_nifti(tmp_path / "case_t1.nii.gz", np.zeros((16, 16, 16), np.float32))
    out = tmp_path / "out"
    assert_user_error(cli(capsys, "predict", "--model", model, "--input", image, "--output", out,
                          "--threshold", "0.3"), "a translation model; --threshold applies to segmentation")
    assert not out.exists()
