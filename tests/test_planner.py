"""Self-configuration: the dataset fingerprint, the plan (a pure function of fingerprint, step-time
table, budget and device), time budgets, the residual generator, per-sample Dice, and the
prediction options chosen on validation cases."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss

from vox2vox.config import Config, load_config, parse_duration
from vox2vox.data.fingerprint import Fingerprint, fingerprint_dataset
from vox2vox.data.labels import get_convention
from vox2vox.data.layouts import discover
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import load_checkpoint
from vox2vox.model.losses import one_hot, per_sample_dice_loss
from vox2vox.model.residual import ResidualGenerator, build_generator
from vox2vox.model.translation import TaskConfig
from vox2vox.train.memory import estimate_memory
from vox2vox.train.planner import Device, make_plan, plan_to_toml, target_spacing
from vox2vox.train.schedule import lr_factor

BRATS_LIKE = Fingerprint(
    n_cases=8, n_labelled=8, channels=("flair",), n_classes=2, median_spacing=(1.0, 1.0, 1.0),
    median_foreground_mm=(140.0, 170.0, 140.0), channel_kind=("mr",), channel_percentiles=((0.5, 900.0),),
    class_fraction=(0.97, 0.03), median_class_voxels=(3.2e6, 9e4), median_components=(0.0, 2.0),
)
CT_LIKE = Fingerprint(
    n_cases=5, n_labelled=5, channels=("ct",), n_classes=2, median_spacing=(0.98, 0.98, 3.27),
    median_foreground_mm=(160.0, 150.0, 180.0), channel_kind=("ct",), channel_percentiles=((-61.2, 187.9),),
    class_fraction=(0.98, 0.02), median_class_voxels=(1e6, 2e4), median_components=(0.0, 1.0),
)
CPU = Device("cpu", 24 * 2**30, "cpu", 2)
TABLE = {"48x48x48": 0.30, "64x64x64": 0.70, "80x80x80": 1.40, "80x96x80": 1.7}


def test_plan_is_deterministic_for_a_fingerprint_and_step_table():
    a = make_plan(BRATS_LIKE, device=CPU, budget_seconds=1800, throughput=TABLE)
    b = make_plan(Fingerprint.from_json(BRATS_LIKE.to_json()), device=CPU, budget_seconds=1800, throughput=dict(TABLE))
    assert a.config == b.config and a.reasons == b.reasons
    # Every choice has its line, and the config it writes loads as a valid Config.
    assert len(a.reasons) >= 8
    config = Config.from_dict(a.config)
    assert config.generator.arch == "residual" and config.train.budget_seconds == 1800
    assert config.train.select == "last" and config.optim.schedule == "poly"


def test_plan_trades_patch_size_for_steps():
    # 30 minutes at 0.3 s a 48^3 step: ~5100 steps; 64^3 at 0.7 s: ~2200 (>= 1500) -> 64^3 is affordable.
    assert make_plan(BRATS_LIKE, device=CPU, budget_seconds=1800, throughput=TABLE).config["train"]["patch_size"] == [64, 64, 64]
    # Ten minutes: only 48^3 gives enough steps.
    assert make_plan(BRATS_LIKE, device=CPU, budget_seconds=600, throughput=TABLE).config["train"]["patch_size"] == [48, 48, 48]
    # A slower machine (every step 3x longer) plans smaller patches for the same budget.
    slow = {k: 3 * v for k, v in TABLE.items()}
    assert make_plan(BRATS_LIKE, device=CPU, budget_seconds=1800, throughput=slow).config["train"]["patch_size"] == [48, 48, 48]


def test_plan_adopts_cpu_bf16_only_where_its_timing_shows_the_gain():
    # bf16 timed 1.5x faster everywhere: the plan trains in bf16, and the faster step buys a larger patch.
    fast = TABLE | {k + "@bf16": v / 1.5 for k, v in TABLE.items()}
    plan = make_plan(BRATS_LIKE, device=CPU, budget_seconds=1800, throughput=fast)
    assert plan.config["train"]["amp"] == "bf16"
    assert plan.config["train"]["patch_size"] == [80, 80, 80]  # 1.40 / 1.5 s a step still gives >= 1500 steps
    assert any(r.startswith("precision bf16") and "0.93 s a step against 1.40 s" in r for r in plan.reasons)
    assert Config.from_dict(plan.config).train.amp == "bf16"
    # Barely faster (within the timing's noise): fp32, and the reason says why.
    close = TABLE | {k + "@bf16": v / 1.05 for k, v in TABLE.items()}
    plan = make_plan(BRATS_LIKE, device=CPU, budget_seconds=1800, throughput=close)
    assert plan.config["train"]["amp"] == "off" and plan.config["train"]["patch_size"] == [64, 64, 64]
    assert any(r.startswith("precision fp32: bf16 autocast timed") for r in plan.reasons)
    # Not timed (no fast bf16 on this CPU): fp32.
    plan = make_plan(BRATS_LIKE, device=CPU, budget_seconds=1800, throughput=TABLE)
    assert plan.config["train"]["amp"] == "off"
    # A GPU plan leaves train.amp to `auto` (bf16 or fp16 by the GPU).
    gpu = Device("cuda", 80 * 2**30, "gpu", 8)
    assert "amp" not in make_plan(BRATS_LIKE, device=gpu, budget_seconds=1800, throughput=fast).config["train"]


def test_plan_coarsens_to_the_budget_and_keeps_anisotropic_axes():
    spacing, _ = target_spacing(BRATS_LIKE, 5e5)
    voxels = math.prod(e / s for e, s in zip(BRATS_LIKE.median_foreground_mm, spacing, strict=True))
    assert voxels <= 5e5 and spacing[0] == spacing[1] == spacing[2] and spacing[0] > 1.5
    # CT at 0.98 x 0.98 x 3.27 mm: the fine in-plane axes are coarsened first, towards the slice spacing.
    spacing, _ = target_spacing(CT_LIKE, 5e5)
    assert spacing[2] >= 3.27 - 1e-6 and spacing[0] > 0.98
    plan = make_plan(CT_LIKE, device=CPU, budget_seconds=1800, throughput=TABLE)
    assert plan.config["preprocess"]["normalize"] == "ct-window"
    assert plan.config["preprocess"]["ct_window"] == [-62, 188]


@pytest.mark.parametrize("memory_gib", [1.0, 2.0, 8.0, 80.0])
def test_plan_never_exceeds_the_device_memory(memory_gib):
    device = Device("cuda", int(memory_gib * 2**30), "gpu", 8)
    table = {"48x48x48": 0.01, "64x64x64": 0.02, "80x96x80": 0.05, "144x176x144": 0.1}
    big = Fingerprint(**{**BRATS_LIKE.to_json(), "median_foreground_mm": (140.0, 170.0, 140.0)})
    try:
        plan = make_plan(big, device=device, budget_seconds=12 * 3600, throughput=table)
    except Vox2VoxError as err:  # refusing is allowed; planning past the memory is not
        assert "GiB" in str(err)
        return
    need = estimate_memory(Config.from_dict(plan.config), amp="bf16").total_bytes
    assert need <= device.memory_bytes


def test_plan_toml_round_trips_through_the_config_loader(tmp_path):
    plan = make_plan(CT_LIKE, device=CPU, budget_seconds=1800, throughput=TABLE)
    path = tmp_path / "plan.toml"
    path.write_text(plan_to_toml(plan))
    assert load_config(path) == Config.from_dict(plan.config)
    assert "# patch" in path.read_text()


def test_fingerprint_of_the_shared_ct_cases(shared_data: Path, tmp_path: Path):
    root = shared_data / "ct-sarcoma"
    lines = ["id,ct,label"] + [f"{p.name},{p}/CT_image.nii.gz,{p}/CT_mask.nii.gz" for p in sorted(root.iterdir()) if p.is_dir()]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    spec = discover(manifest)
    fp, per_case = fingerprint_dataset(spec.cases[:2], spec.channel_names, get_convention("binary"))
    assert fp.channel_kind == ("ct",) and fp.n_labelled == 2
    lo, hi = fp.channel_percentiles[0]
    assert -900 < lo < 0 < hi < 500  # the tumour: soft tissue in HU, not the air floor or bone
    assert per_case[0].spacing[2] > 3 * per_case[0].spacing[0]  # the anisotropic slices are seen
    assert 0 < fp.class_fraction[1] < 0.1


def test_durations_and_schedules():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    assert parse_duration("12h") == 43200 and parse_duration("6m00s") == 360
    for bad in ("", "soon", "-5m", "0", "nan", "1x"):
        with pytest.raises(Vox2VoxError):
            parse_duration(bad)
    assert lr_factor(0.0, "poly") == 1.0 and lr_factor(1.0, "poly") == 0.0 and lr_factor(0.5, "constant") == 1.0
    assert lr_factor(0.5, "poly") == pytest.approx(0.5**0.9) and lr_factor(0.5, "cosine") == pytest.approx(0.5)


def test_per_sample_dice_matches_monai_and_weighs_every_sample():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 8, 8, 8, generator=g), 1)
    target = one_hot(torch.randint(0, 3, (2, 8, 8, 8), generator=g), 3)
    expected = DiceLoss(batch=False)(probs, target)
    assert per_sample_dice_loss(target, probs).item() == pytest.approx(expected.item(), rel=1e-6)
    # A small object missed in one sample costs that sample's whole Dice term, not its voxel share.
    target = torch.zeros(2, 2, 8, 8, 8)
    target[:, 0] = 1
    target[0, :, :4] = torch.tensor([0.0, 1.0])[:, None, None, None]  # big object in sample 0
    target[1, :, :1, :1, :1] = torch.tensor([0.0, 1.0])[:, None, None, None]  # one voxel in sample 1
    miss_small = target.clone()
    miss_small[1, :, :1, :1, :1] = torch.tensor([1.0, 0.0])[:, None, None, None]
    assert per_sample_dice_loss(target, miss_small).item() > 0.2


def test_residual_generator_contract():
    config = Config.from_dict({"generator": {"arch": "residual", "in_channels": 2, "n_classes": 3,
                                             "base_filters": 4, "max_filters": 32, "depth": 3, "dropout": 0.0}})
    net = build_generator(config.generator)
    assert isinstance(net, ResidualGenerator)
    x = torch.randn(1, 2, 16, 24, 32)
    probs = net(x)
    assert probs.shape == (1, 3, 16, 24, 32) and torch.allclose(probs.sum(1), torch.ones(1, 16, 24, 32), atol=1e-5)
    with pytest.raises(Vox2VoxError, match="multiple of 8"):
        net(torch.randn(1, 2, 12, 16, 16))
    # The state dict round-trips into a fresh network (what checkpoints rely on).
    other = build_generator(config.generator)
    other.load_state_dict(net.state_dict())
    net.eval(), other.eval()
    assert torch.equal(net(x), other(x))




def test_budget_stop_and_resume_continue_the_schedule(tmp_path):
    from vox2vox.data.augmentation import sample_patch
    from vox2vox.train.training import FitHooks, TrainingData, fit

    rng = np.random.default_rng(0)
    cases = []
    for _ in range(2):
        label = np.zeros((24, 24, 24), np.int64)
        label[6:14, 6:14, 6:14] = 1
        image = (label[None] + rng.normal(0, 0.3, (1, 24, 24, 24))).astype(np.float32)
        cases.append((image, label))
    config = Config.from_dict({
        "generator": {"arch": "residual", "in_channels": 1, "n_classes": 2, "base_filters": 4, "depth": 2, "dropout": 0.0},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": 4, "n_strided": 2},
        "loss": {"dice": "per_sample", "lambda_ce": 1.0, "lambda_adv": 0.1, "adversarial_start": 0.3},
        "optim": {"schedule": "poly", "lr_g": 1e-3},
        "train": {"budget": "6s", "batch_size": 1, "patch_size": [24, 24, 24], "device": "cpu", "amp": "off",
                  "select": "last"},
    })
    run = tmp_path / "run"
    stop_after = {"steps": 0}

    def interrupt(state):  # a Ctrl-C about a third into the budget
        stop_after["steps"] += 1
        if state.seconds == 0.0 and stop_after["steps"] >= 1:
            import os
            import signal
            import time

            time.sleep(2.0)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fit(config, TrainingData(cases, sample_patch), run, hooks=FitHooks(on_step=interrupt), progress=False)
    first = load_checkpoint(run / "checkpoints" / "last.safetensors").state
    assert 1.5 < first["seconds"] < 6.0  # stopped inside the budget, with the time spent recorded
    result = fit(config, TrainingData(cases, sample_patch), run, resume=True, progress=False)
    final = load_checkpoint(run / "checkpoints" / "last.safetensors").state
    # The resume used what was left, not a new budget (which would end at first + 6 s or later);
    # relative to the first part, so a busy machine's longer last epoch does not fail it.
    assert 6.0 <= final["seconds"] < first["seconds"] + 6.0
    rows = [r for r in result.history if "lr_g" in r]
    assert rows[-1]["lr_g"] < 0.2 * 1e-3  # decayed near its end when the budget ran out
    assert (run / "checkpoints" / "best.safetensors").is_file()  # select=last: the final model


def test_the_last_checkpoint_is_the_final_state_when_epoch_end_work_spends_the_budget(tmp_path):
    """Validation or a hook at an epoch's end can carry the clock past the budget after that epoch's
    checkpoint is written; the resume point must still say the budget is spent."""
    import time

    from vox2vox.data.augmentation import sample_patch
    from vox2vox.train.training import FitHooks, TrainingData, fit

    label = np.zeros((16, 16, 16), np.int64)
    label[4:10, 4:10, 4:10] = 1
    cases = [(label[None].astype(np.float32), label)]
    config = Config.from_dict({
        "generator": {"arch": "residual", "in_channels": 1, "n_classes": 2, "base_filters": 2, "depth": 2, "dropout": 0.0},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": 2, "n_strided": 2},
        "train": {"budget": "1s", "batch_size": 1, "patch_size": [16, 16, 16], "device": "cpu", "amp": "off"},
    })
    slept = []

    def slow_epoch_end(row, generator):  # e.g. a slow validation, once
        if not slept:
            slept.append(True)
            time.sleep(1.2)

    run = tmp_path / "run"
    result = fit(config, TrainingData(cases, sample_patch), run, hooks=FitHooks(on_epoch=slow_epoch_end),
                 progress=False)
    last = load_checkpoint(run / "checkpoints" / "last.safetensors").state
    assert last["seconds"] >= 1.0 and last["step"] == result.steps
    again = fit(config, TrainingData(cases, sample_patch), run, resume=True, progress=False)
    assert again.steps == result.steps  # nothing left to train


def test_planned_train_then_predict_from_the_command_line(tmp_path):
    """`train` without --config plans (plan.toml in the run), counts epochs when asked for them
    without a budget, and `predict` applies the options chosen on validation."""
    from helpers import make_manifest
    from vox2vox.cli import main

    manifest = make_manifest(tmp_path / "data", n_cases=4)
    run = tmp_path / "run"
    assert main(["train", "--data", str(manifest), "--out", str(run), "--set", "train.epochs=2",
                 "--set", "generator.base_filters=4", "--set", "train.device=\"cpu\""]) == 0
    plan = (run / "plan.toml").read_text()
    assert "[generator]" in plan and 'arch = "residual"' in plan
    assert "busy_cores_while_timing" in plan  # the plan says how busy the machine was when it timed steps
    config = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert config.train.budget is None and config.train.epochs == 2 and config.generator.base_filters == 4
    chosen = load_checkpoint(run / "checkpoints" / "best.safetensors").state["predict"]
    assert set(chosen) >= {"tta", "largest_component", "validation_dice", "rule", "decisions"}
    # 4 labelled cases: the plan holds out 2, so no single case decides the options.
    assert len(chosen["validation_case_ids"]) == 2 == len(json.loads((run / "split.json").read_text())["val"])
    assert main(["predict", "--model", str(run), "--input", str(manifest), "--output", str(tmp_path / "pred"),
                 "--no-progress"]) == 0
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 4


MR_PAIR = dataclasses.replace(BRATS_LIKE, n_labelled=0, channels=("t1", "flair"), n_classes=1,
                              channel_kind=("mr", "mr"), channel_percentiles=((0.0, 800.0), (0.0, 900.0)),
                              class_fraction=(1.0,), median_class_voxels=(0.0,), median_components=(0.0,))
CT_PAIR = dataclasses.replace(CT_LIKE, n_labelled=0, channels=("ct_early", "ct_late"), n_classes=1,
                              channel_kind=("ct", "ct"), channel_percentiles=((-1000.0, 1500.0), (-1000.0, 1800.0)),
                              class_fraction=(1.0,), median_class_voxels=(0.0,), median_components=(0.0,))


def test_translation_plan_sizes_the_networks_for_sources_and_targets():
    task = TaskConfig(kind="translate", source=("t1",), target=("flair",))
    plan = make_plan(MR_PAIR, device=CPU, budget_seconds=1800, throughput=TABLE, task=task)
    again = make_plan(Fingerprint.from_json(MR_PAIR.to_json()), device=CPU, budget_seconds=1800,
                      throughput=dict(TABLE), task=task)
    assert plan.config == again.config and plan.reasons == again.reasons
    config = Config.from_dict(plan.config)
    assert config.task.translate and config.task.source == ("t1",) and config.task.target == ("flair",)
    assert (config.generator.in_channels, config.generator.n_classes, config.generator.output) == (1, 1, "linear")
    assert (config.discriminator.in_channels, config.discriminator.n_classes) == (1, 1)
    assert config.loss.adversarial and config.loss.adversarial_start == 0.0 and config.task.lambda_l1 == 100.0
    assert not config.train.tune_prediction and config.preprocess.normalize == "zscore-nonzero"
    # The resolution and patch rules are the segmentation plan's: same fingerprint extent, same choice.
    assert list(config.train.patch_size) == make_plan(BRATS_LIKE, device=CPU, budget_seconds=1800,
                                                throughput=TABLE).config["train"]["patch_size"]
    assert any("synthesise flair from t1" in r for r in plan.reasons)
    # CT to CT: the window covers the foreground of both channels and the head is tanh (HU restored).
    ct = Config.from_dict(make_plan(CT_PAIR, device=CPU, budget_seconds=1800, throughput=TABLE,
                                    task=TaskConfig(kind="translate", source=("ct_early",), target=("ct_late",))).config)
    assert ct.preprocess.normalize == "ct-window" and list(ct.preprocess.ct_window) == [-1000, 1800]
    assert ct.task.head == "tanh" and ct.generator.output == "tanh"
    # Segmentation still refuses a dataset without labels.
    with pytest.raises(Vox2VoxError, match="no case has a label map"):
        make_plan(MR_PAIR, device=CPU, budget_seconds=1800, throughput=TABLE)


BRATS_CONTRASTS = dataclasses.replace(BRATS_LIKE, n_labelled=0, channels=("t1", "t1ce", "t2", "flair"), n_classes=1,
                                      channel_kind=("mr",) * 4, channel_percentiles=((0.0, 800.0),) * 4,
                                      class_fraction=(1.0,), median_class_voxels=(0.0,), median_components=(0.0,))


def test_translation_plan_is_finer_for_a_longer_budget_and_takes_several_sources():
    task = TaskConfig(kind="translate", source=("t1", "t1ce", "t2"), target=("flair",))
    spacings = {}
    for hours in (0.5, 2.0, 4.0):
        config = Config.from_dict(make_plan(BRATS_CONTRASTS, device=CPU, budget_seconds=hours * 3600,
                                            throughput=TABLE, task=task).config)
        assert (config.generator.in_channels, config.generator.n_classes) == (3, 1)
        assert config.task.source == ("t1", "t1ce", "t2") and config.task.target == ("flair",)
        spacings[hours] = config.preprocess.target_spacing
    # Finer with every longer budget (the median case's voxels grow with it), never below the data's 1 mm.
    assert math.prod(spacings[0.5]) > math.prod(spacings[2.0]) > math.prod(spacings[4.0]) >= 1.0


def test_planned_translation_from_the_command_line(tmp_path):
    """`train --set task.kind=translate` without --config plans a translation run and trains it."""
    from vox2vox.cli import main
    from vox2vox.data.synthetic import write_brats_folder

    data = tmp_path / "data"
    write_brats_folder(data, n_cases=3, seed=5, shape=(32, 32, 32))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--set", 'task.kind="translate"',
                 "--set", 'task.source=["t1"]', "--set", 'task.target=["flair"]', "--set", "train.epochs=2",
                 "--set", "generator.base_filters=4", "--set", "train.device=\"cpu\""]) == 0
    plan = (run / "plan.toml").read_text()
    assert "[task]" in plan and 'kind = "translate"' in plan and 'output = "linear"' in plan
    config = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert config.task.translate and config.generator.base_filters == 4 and config.generator.in_channels == 1
    assert main(["predict", "--model", str(run), "--input", str(data), "--output", str(tmp_path / "syn"),
                 "--no-progress"]) == 0
    assert len(list((tmp_path / "syn").glob("*.nii.gz"))) == 3


@pytest.mark.parametrize(("labelled", "held_out"), [(1, 0), (2, 0), (3, 0), (4, 2), (5, 2), (8, 2), (9, 3), (20, 4)])
def test_plan_holds_out_enough_validation_cases_for_choices_no_case_decides(labelled, held_out):
    fp = dataclasses.replace(BRATS_LIKE, n_cases=labelled, n_labelled=labelled)
    plan = make_plan(fp, device=CPU, budget_seconds=1800, throughput=TABLE)
    assert plan.config["data"]["val_cases"] == held_out
    reason = next(r for r in plan.reasons if r.startswith("validation:"))
    # Never a lone validation case: it would take a training case and decide nothing.
    assert (f"{held_out} of {labelled} labelled cases" if held_out else f"none of {labelled} labelled") in reason
    assert ("keep their defaults" in reason) is (held_out == 0)


def test_a_users_validation_hold_out_replaces_the_plans_and_its_reason():
    from vox2vox.train.planned import changed_keys, reasons_after

    plan = make_plan(BRATS_LIKE, device=CPU, budget_seconds=1800, throughput=TABLE)
    planned = Config.from_dict(plan.config)
    assert planned.data.val_cases == 2
    final = planned.with_overrides(["data.val_cases=0", "data.path=elsewhere"])
    changed = changed_keys(planned, final)
    assert changed == {"data.val_cases": 0}  # where the data is stays the user's, not a change to the plan
    reasons = reasons_after(plan.reasons, changed, final)
    assert any(r.startswith("validation: data.val_cases=0 (your setting") for r in reasons)
    assert not any("2 of 8 labelled cases" in r for r in reasons)
