"""The command line: help, exit codes, one-line errors, and a train -> predict -> evaluate round trip."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from helpers import tiny_overrides
from vox2vox.cli import LAYOUT_NAMES, main
from vox2vox.config import Config
from vox2vox.data.layouts import LAYOUTS
from vox2vox.data.synthetic import write_brats_folder

COMMANDS = ("demo", "dataset", "train", "predict", "export", "evaluate", "report", "render", "cv", "plan", "config",
            "env")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: vox2vox " + command in capsys.readouterr().out


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "vox2vox.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("vox2vox ")


def test_user_error_is_one_line_with_status_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(missing) in err[0] and "Traceback" not in err[0]


def test_bad_config_value_names_the_key(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--set", "optim.lr_g=-1", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "optim.lr_g" in capsys.readouterr().err


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"epochz": 3}}))
    assert main(["train", "--data", str(tmp_path), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "epochz" in err and str(cfg) in err


def test_debug_shows_traceback(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


TINY = tiny_overrides({"train.patch_size": "[24,24,24]", "train.batch_size": "1", "data.val_cases": "1"})


@pytest.mark.slow
def test_train_predict_evaluate_round_trip(tmp_path, capsys):
    data = tmp_path / "brats"
    ids = write_brats_folder(data, n_cases=3, seed=1, shape=(32, 32, 24), spacing=(1.0, 1.2, 2.0))
    run = tmp_path / "run"
    assert main(["train", "--config", "paper", "--data", str(data), "--out", str(run), "--set", "train.epochs=1", *TINY]) == 0
    # --resume continues the same run to more epochs.
    assert main(["train", "--data", str(data), "--out", str(run), "--resume", "--set", "train.epochs=2", *TINY]) == 0
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    # Starting over into a used run directory without --resume is refused.
    assert main(["train", "--config", "paper", "--data", str(data), "--out", str(run), *TINY]) == 2

    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--input", str(data), "--output", str(pred), "--device", "cpu"]) == 0
    for case_id in ids:
        out = nib.load(pred / f"{case_id}.nii.gz")
        ref = nib.load(data / case_id / f"{case_id}_t1.nii.gz")
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, ref.affine)
        assert np.issubdtype(out.get_data_dtype(), np.integer)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 4}

    csv = tmp_path / "scores.csv"
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "WT" in printed and "ET" in printed
    assert csv.is_file()


def test_predict_rejects_wrong_channel_count(tmp_path, capsys):
    data = tmp_path / "brats"
    write_brats_folder(data, n_cases=2, seed=1, shape=(24, 24, 24))
    run = tmp_path / "run"
    assert main(["train", "--config", "paper", "--data", str(data), "--out", str(run), "--set", "train.epochs=1",
                 "--set", "loss.adversarial=false", *TINY]) == 0
    # A single-channel image is not what a 4-channel model takes.
    single = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24), np.float32), np.eye(4)), single)
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--input", str(single), "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "channel" in err and str(single) in err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())



def test_layout_help_names_every_layout():
    assert LAYOUT_NAMES == LAYOUTS


def test_config_defaults_lists_every_key_with_its_default(capsys):
    assert main(["config", "--defaults"]) == 0
    out = capsys.readouterr().out
    config = Config()
    for section in dataclasses.fields(config):
        for item in dataclasses.fields(getattr(config, section.name)):
            key = f"{section.name}.{item.name}"
            assert f"  {key} = " in out, key
    assert "  train.patch_size = [128, 128, 128]" in out


def test_config_without_options_prints_the_defaults(capsys):
    assert main(["config"]) == 0
    plain = capsys.readouterr().out
    assert main(["config", "--defaults"]) == 0
    assert plain == capsys.readouterr().out and "  train.patch_size = [128, 128, 128]" in plain


@pytest.mark.parametrize("argv, needle", [
    (["predict", "--model", "m", "--input", "i", "--output", "o", "--threshold", "1.5"], "--threshold"),
    (["train", "--data", "d", "--budget", "-5m"], "--budget"),
    (["cv", "--data", "d", "--out", "o", "--folds", "three"], "--folds"),
    (["predict", "--model", "m"], "--input"),
])
def test_a_bad_flag_is_one_line_with_status_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"vox2vox {argv[0]}: error: ") and needle in err and "usage:" not in err


def test_a_closed_pipe_ends_quietly(tmp_path):
    from helpers import make_model

    model = make_model(tmp_path / "model.safetensors")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for argv in (["info", "--json", str(model)], ["config"]):
        # As the issue shows it; whether the reader is gone before the write is up to the scheduler...
        proc = subprocess.run(f"{shlex.quote(sys.executable)} -m vox2vox.cli {shlex.join(argv)} | head -c 10",
                              shell=True, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0 and len(proc.stdout) == 10 and proc.stderr == "", proc.stderr
        # ...so also with the reader gone for certain: stdout a pipe whose read end is closed.
        read, write = os.pipe()
        os.close(read)
        proc = subprocess.run([sys.executable, "-m", "vox2vox.cli", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=120)
        os.close(write)
        assert proc.stderr == "" and proc.returncode == 141, proc.stderr  # 128 + SIGPIPE, as Unix tools
