"""train_step's two half-steps, the accuracy gate, and fit: outputs, resume, refusal to overwrite."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

import vox2vox.train.training as training
from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import ModelInfo, load_checkpoint
from vox2vox.train.patches import PatchDataset
from vox2vox.train.runs import train_on_dataset
from vox2vox.train.state import build_state
from vox2vox.train.training import FitHooks, TrainingData, fit, train_step

N_CLASSES = 3
#: A label convention of N_CLASSES classes, as training stores it (checkpoints validate it on loading).
CONVENTION = get_convention({"values": {str(i): f"class_{i}" for i in range(N_CLASSES)}}).to_json()


def tiny_config(**sections) -> Config:
    data = {
        "generator": {"in_channels": 2, "n_classes": N_CLASSES, "base_filters": 4, "max_filters": 16, "depth": 3,
                      "bottleneck_blocks": 1},
        "discriminator": {"in_channels": 2, "n_classes": N_CLASSES, "base_filters": 4, "max_filters": 16,
                          "n_strided": 2},
        "loss": {"dice_weighting": "uniform"},
        "train": {"patch_size": [16, 16, 16], "batch_size": 2, "epochs": 2, "seed": 7, "device": "cpu"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.from_dict(data)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, 16, 16, 16, generator=g), torch.randint(0, N_CLASSES, (2, 16, 16, 16), generator=g)


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_one_step_changes_both_networks():
    config = tiny_config()
    state = build_state(config)
    g0, d0 = params(state.generator), params(state.discriminator)
    out = train_step(state, *batch(), config)
    assert not same(g0, params(state.generator))
    assert not same(d0, params(state.discriminator))
    assert {"loss_g", "loss_dice", "loss_adv", "loss_d", "d_acc", "d_updated"} <= set(out)
    assert out["d_updated"] == 1.0 and state.step == 1
    assert all(np.isfinite(v) for v in out.values())
    assert out["loss_g"] == pytest.approx(out["loss_adv"] + config.loss.lambda_dice * out["loss_dice"], rel=1e-5)


def test_generator_half_step_leaves_the_discriminator_unchanged():
    config = tiny_config()
    state = build_state(config)
    train_step(state, *batch(1), config)  # a first step so that Adam has momentum in D
    seen = {}
    d_step = state.opt_d.step

    def observed_d_step(*args, **kwargs):
        result = d_step(*args, **kwargs)
        seen["params"] = params(state.discriminator)
        seen["grads"] = [p.grad.clone() for p in state.discriminator.parameters()]
        seen["g_params"] = params(state.generator)
        return result

    state.opt_d.step = observed_d_step
    train_step(state, *batch(2), config)
    # D's weights and gradients after the whole step are those right after its own half-step:
    # the G half-step neither moved D nor sent gradients into it; G moved after D's update.
    assert same(seen["params"], params(state.discriminator))
    assert same(seen["grads"], [p.grad for p in state.discriminator.parameters()])
    assert not same(seen["g_params"], params(state.generator))
    assert all(p.requires_grad for p in state.discriminator.parameters())


def test_gated_discriminator_stays_unchanged_while_the_generator_learns(monkeypatch):
    config = tiny_config(train={"d_accuracy_gate": 0.8})
    state = build_state(config)
    monkeypatch.setattr(training, "discriminator_accuracy", lambda real, fake: torch.tensor(0.9))
    g0, d0 = params(state.generator), params(state.discriminator)
    out = train_step(state, *batch(), config)
    assert out["d_updated"] == 0.0 and out["d_acc"] == pytest.approx(0.9)
    assert same(d0, params(state.discriminator))
    assert not same(g0, params(state.generator))
    assert "loss_adv" in out  # G still plays against the (frozen) D


def test_accuracy_gate_with_a_confident_discriminator():
    # Train D alone until it is right on more than 1% of patches, then gate at 1%: no update.
    config = tiny_config(train={"d_accuracy_gate": 0.01})
    state = build_state(config)
    image, label = batch(3)
    target = training.one_hot(label, N_CLASSES)
    with torch.no_grad():
        fake = state.generator(image)
    opt = torch.optim.Adam(state.discriminator.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        training.lsgan_discriminator_loss(state.discriminator(image, target),
                                          state.discriminator(image, fake)).backward()
        opt.step()
    d0 = params(state.discriminator)
    out = train_step(state, image, label, config)
    assert out["d_acc"] > 0.01
    assert out["d_updated"] == 0.0
    assert same(d0, params(state.discriminator))


def test_gate_at_one_always_updates_the_discriminator(monkeypatch):
    config = tiny_config(train={"d_accuracy_gate": 1.0})
    state = build_state(config)
    monkeypatch.setattr(training, "discriminator_accuracy", lambda real, fake: torch.tensor(1.0))
    d0 = params(state.discriminator)
    out = train_step(state, *batch(), config)
    assert out["d_updated"] == 1.0
    assert not same(d0, params(state.discriminator))


def test_without_the_adversarial_part_the_discriminator_never_changes():
    config = tiny_config(loss={"adversarial": False})
    state = build_state(config)
    g0, d0 = params(state.generator), params(state.discriminator)
    for seed in range(2):
        out = train_step(state, *batch(seed), config)
        assert "loss_adv" not in out and "loss_d" not in out and "d_updated" not in out
        assert out["loss_g"] == pytest.approx(config.loss.lambda_dice * out["loss_dice"])
    assert same(d0, params(state.discriminator))
    assert all(p.grad is None for p in state.discriminator.parameters())
    assert not same(g0, params(state.generator))


def test_the_critic_updates_on_every_kth_step_only_and_the_generator_on_every_step():
    config = tiny_config(discriminator={"update_every": 3})
    state = build_state(config)
    updated = []
    for seed in range(6):
        d0, g0 = params(state.discriminator), params(state.generator)
        out = train_step(state, *batch(seed), config)
        updated.append(not same(d0, params(state.discriminator)))
        assert "loss_adv" in out and not same(g0, params(state.generator))
        assert ("loss_d" in out) is updated[-1]
    assert updated == [True, False, False, True, False, False]


def test_a_coarser_critic_sees_the_pair_pooled_and_its_map_shrinks():
    from vox2vox.model.discriminator import Discriminator

    config = tiny_config(discriminator={"input_scale": 2}, train={"patch_size": [32, 32, 32]})
    full = dataclasses.replace(config.discriminator, input_scale=1)
    image, seg = torch.randn(1, 2, 32, 32, 32), torch.rand(1, N_CLASSES, 32, 32, 32)
    coarse, plain = Discriminator(config.discriminator), Discriminator(full)
    plain.load_state_dict(coarse.state_dict())
    coarse.eval(), plain.eval()
    pooled = torch.nn.functional.avg_pool3d
    assert torch.allclose(coarse(image, seg), plain(pooled(image, 2), pooled(seg, 2)))
    assert config.discriminator.min_input_size() == 2 * full.min_input_size()
    with pytest.raises(Vox2VoxError, match="discriminator needs at least"):
        tiny_config(discriminator={"input_scale": 2})  # 16^3 patches pool to 8^3: too small for it
    state = build_state(config)
    out = train_step(state, torch.randn(2, 2, 32, 32, 32), torch.randint(0, N_CLASSES, (2, 32, 32, 32)), config)
    assert out["d_updated"] == 1.0 and np.isfinite(out["loss_adv"])


def test_feature_matching_pulls_the_fake_pair_towards_the_real_one_in_the_critics_features():
    config = tiny_config(loss={"lambda_fm": 10.0}, discriminator={"update_every": 2})
    state = build_state(config)
    for seed in range(2):  # a step with the critic's half-step, then one without (real features recomputed)
        out = train_step(state, *batch(seed), config)
        assert out["loss_fm"] > 0
    plain = tiny_config()
    state_fm, state_plain = build_state(config), build_state(plain)
    torch.manual_seed(0)  # the critic's dropout draws the same masks in both steps
    out_fm = train_step(state_fm, *batch(), config)
    torch.manual_seed(0)
    out_plain = train_step(state_plain, *batch(), plain)
    # Same seeds and weights: the objectives differ by exactly the weighted feature-matching term.
    assert out_fm["loss_g"] == pytest.approx(out_plain["loss_g"] + 10.0 * out_fm["loss_fm"], rel=1e-5)


@pytest.mark.parametrize(("key", "value"), [("discriminator.input_scale", 0), ("discriminator.update_every", 0),
                                            ("loss.lambda_fm", -1.0)])
def test_cheaper_critic_keys_are_validated(key, value):
    with pytest.raises(Vox2VoxError, match=key):
        Config().with_overrides([f"{key}={value}", "loss.adversarial=false"])


# ---- fit --------------------------------------------------------------------------------------
def make_cases(n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((2, 24, 24, 24)).astype(np.float32), rng.integers(0, N_CLASSES, (24, 24, 24)))
        for _ in range(n)
    ]


def sample_patch(image, label, size, rng, *, foreground_prob=0.5):
    """A deterministic (given the rng) random crop."""
    starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(label.shape, size, strict=True)]
    window = tuple(slice(a, a + p) for a, p in zip(starts, size, strict=True))
    return image[(slice(None), *window)], label[window]


def augment(image, label, rng):
    """Flip along a random axis half of the time (randomness from the rng only)."""
    if rng.random() < 0.5:
        axis = int(rng.integers(0, 3))
        image, label = np.flip(image, axis + 1), np.flip(label, axis)
    return image, label


def fit_config(epochs: int) -> Config:
    return tiny_config(train={"epochs": epochs, "batch_size": 2, "seed": 11}, loss={"dice_weighting": "fixed"})


def run_fit(config, run_dir, *, validate=None, **kw):
    return fit(config, TrainingData(make_cases(), sample_patch, augment), run_dir, hooks=FitHooks(validate=validate),
               progress=False, **kw)


def test_patch_dataset_items_depend_only_on_seed_epoch_and_index():
    kw = dict(patch_size=(16, 16, 16), seed=1, patches_per_case=2, sample_patch=sample_patch,
              augment=augment, foreground_prob=0.5)
    a = PatchDataset(make_cases(), epoch=0, **kw)
    b = PatchDataset(make_cases(), epoch=0, **kw)
    c = PatchDataset(make_cases(), epoch=1, **kw)
    assert len(a) == 6
    assert sorted(a.order.tolist()) == [0, 0, 1, 1, 2, 2]
    for i in reversed(range(len(a))):  # access order does not matter
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
        assert a[i][0].shape == (2, 16, 16, 16) and a[i][1].dtype == torch.int64
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(len(a)))


def test_train_4_epochs_equals_train_2_then_resume_to_4(tmp_path):
    straight = run_fit(fit_config(4), tmp_path / "straight")
    first = run_fit(fit_config(2), tmp_path / "split")
    assert first.epochs == 2
    resumed = run_fit(fit_config(4), tmp_path / "split", resume=True)
    assert (straight.epochs, straight.steps) == (resumed.epochs, resumed.steps) == (4, 8)

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.safetensors")
    for part in ("generator", "discriminator"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    for name in ("generator", "discriminator"):
        for idx, entry in a.optimizers[name]["state"].items():
            for key, value in entry.items():
                assert torch.equal(value, b.optimizers[name]["state"][idx][key])
    # The metrics log of the resumed run reads as one run: epochs 1..4, identical losses.
    rows_a = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["loss_g"] for r in rows_a] == [r["loss_g"] for r in rows_b]


def test_a_run_writes_config_metrics_and_checkpoints(tmp_path):
    scores = iter([0.2, 0.5])
    run = tmp_path / "run"
    result = run_fit(fit_config(2), run, validate=lambda g: {"val_dice": next(scores)},
                     model_info=ModelInfo(channels=("a", "b"), layout="manifest", convention=CONVENTION))
    assert (result.epochs, result.steps, result.best_epoch) == (2, 4, 2)
    assert result.best_score == pytest.approx(0.5)

    saved = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert saved.train.epochs == 2
    # Fixed class weights were computed from the training labels and saved with the run.
    assert saved.loss.class_weights is not None and len(saved.loss.class_weights) == N_CLASSES
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["val_dice"] for r in rows] == [0.2, 0.5]
    assert all({"loss_g", "loss_dice", "loss_d", "step"} <= set(r) for r in rows)
    last = load_checkpoint(run / "checkpoints" / "last.safetensors")
    best = load_checkpoint(run / "checkpoints" / "best.safetensors")
    assert (last.state["epoch"], last.state["step"]) == (2, 4)
    assert best.state["best_epoch"] == 2 and best.state["channels"] == ["a", "b"]


def test_a_finished_run_is_not_overwritten_and_resume_needs_a_run(tmp_path):
    run = tmp_path / "run"
    run_fit(fit_config(1), run)
    before = (run / "checkpoints" / "last.safetensors").read_bytes()
    with pytest.raises(Vox2VoxError, match="--resume"):
        run_fit(fit_config(2), run)
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == before
    with pytest.raises(Vox2VoxError, match="nothing to resume"):
        run_fit(fit_config(2), tmp_path / "new", resume=True)
    # A resume with different networks is refused.
    other = tiny_config(generator={"base_filters": 8}, train={"epochs": 2})
    with pytest.raises(Vox2VoxError, match="networks"):
        run_fit(other, run, resume=True)
    with pytest.raises(Vox2VoxError, match="no training cases"):
        fit(fit_config(1), TrainingData([], sample_patch), tmp_path / "empty", progress=False)


def test_resume_after_ctrl_c_mid_epoch_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import os
    import signal

    straight = run_fit(fit_config(3), tmp_path / "straight")
    calls = {"n": 0}
    real_step = training.train_step

    def step_then_interrupt(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the first of epoch 2's two steps
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(training, "train_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_fit(fit_config(3), tmp_path / "split")
    monkeypatch.setattr(training, "train_step", real_step)
    resumed = run_fit(fit_config(3), tmp_path / "split", resume=True)
    assert resumed.steps == straight.steps == 6
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a.generator[k], b.generator[k]) for k in a.generator)
    assert all(torch.equal(a.discriminator[k], b.discriminator[k]) for k in a.discriminator)
    # The log of the interrupted epoch averages all of its steps, as the uninterrupted run's does.
    assert [r["loss_g"] for r in straight.history] == [r["loss_g"] for r in resumed.history]


def test_train_step_adds_the_weighted_cross_entropy_to_the_generator_loss():
    from vox2vox.model.losses import cross_entropy_from_probs, generalized_dice_loss, one_hot

    config = tiny_config(loss={"adversarial": False, "lambda_dice": 5.0, "lambda_ce": 2.0},
                         generator={"dropout": 0.0})
    state = build_state(config, device=torch.device("cpu"))
    image, label = batch()
    with torch.no_grad():
        state.generator.train()
        probs = state.generator(image)
        target = one_hot(label, N_CLASSES)
        dice = float(generalized_dice_loss(target, probs, weighting="uniform"))
        ce = float(cross_entropy_from_probs(target, probs))
    out = train_step(state, image, label, config)
    assert out["loss_ce"] == pytest.approx(ce, rel=1e-5)
    assert out["loss_g"] == pytest.approx(5.0 * dice + 2.0 * ce, rel=1e-5)
    # Without the term the step neither computes nor logs it (the paper's objective).
    plain = tiny_config(loss={"adversarial": False})
    assert "loss_ce" not in train_step(build_state(plain, device=torch.device("cpu")), image, label, plain)



@pytest.mark.parametrize("dice", ["generalized", "per_sample"])
def test_train_step_leaves_the_ignore_label_out_of_dice_and_cross_entropy(dice):
    from vox2vox.model.losses import (
        cross_entropy_from_probs,
        generalized_dice_loss,
        labelled_mask,
        one_hot,
        per_sample_dice_loss,
    )

    config = tiny_config(loss={"adversarial": False, "dice": dice, "lambda_dice": 5.0, "lambda_ce": 2.0},
                         generator={"dropout": 0.0})
    state = build_state(config, device=torch.device("cpu"))
    image, label = batch()
    label[:, :5] = -1  # the ignore label (class index -1)
    with torch.no_grad():
        state.generator.train()
        probs = state.generator(image)
        # The losses of the labelled voxels alone: the ignored slab cut away.
        kept_target, kept_probs = one_hot(label[:, 5:], N_CLASSES), probs[:, :, 5:]
        if dice == "per_sample":
            expected_dice = float(per_sample_dice_loss(kept_target, kept_probs))
            masked = float(per_sample_dice_loss(one_hot(label, N_CLASSES), probs, mask=labelled_mask(label)))
            assert masked == pytest.approx(expected_dice, rel=1e-5)
        else:
            expected_dice = float(generalized_dice_loss(kept_target, kept_probs, weighting="uniform"))
        ce = float(cross_entropy_from_probs(kept_target, kept_probs))
    out = train_step(state, image, label, config)
    assert out["loss_dice"] == pytest.approx(expected_dice, rel=1e-5)
    assert out["loss_ce"] == pytest.approx(ce, rel=1e-5)
    assert all(np.isfinite(v) for v in out.values())

@pytest.mark.slow
def test_short_training_learns_the_phantom_tumour(tmp_path):
    # Vox2Vox (G + D) on six 32^3 phantoms for 40 epochs (~20 s on one CPU core): the held-out
    # whole-tumour Dice rises from about 0.15 (after 10 epochs) to about 0.9; 0.6 is the floor.
    write_brats_folder(tmp_path / "data", n_cases=6, seed=0, shape=(32, 32, 32), prefix="P")
    config = Config().with_overrides([
        "generator.base_filters=8", "generator.depth=3", "generator.bottleneck_blocks=1", "generator.dropout=0.0",
        "discriminator.base_filters=8", "discriminator.dropout=0.0", "train.patch_size=[32,32,32]",
        "train.batch_size=2", "train.patches_per_case=2", "train.epochs=40", "train.val_every=40",
        "train.checkpoint_every=40", "optim.lr_g=0.001", "augment.p_untouched=1.0", "data.val_cases=2",
        'train.device="cpu"', f'data.path="{tmp_path / "data"}"',
    ])
    result = train_on_dataset(config, tmp_path / "run", progress=False)
    final = result.history[-1]
    assert final["epoch"] == 40 and final["val_dice_WT"] >= 0.6, final
    # The default overlap trial decided within the first epochs, and its evidence is in the log once.
    decided = [row for row in result.history if "sampling_overlapped" in row]
    assert len(decided) == 1 and decided[0]["epoch"] <= 10, decided
    assert decided[0]["sampling_overlapped"] in (0.0, 1.0)
    assert decided[0]["step_s_overlapped"] > 0 and decided[0]["step_s_serial"] > 0


@pytest.mark.parametrize("problem", ["no_signal", "no_foreground"])
def test_degenerate_training_data_warns_in_one_line_naming_the_file(tmp_path, capsys, problem):
    from helpers import TINY, cli, make_manifest

    manifest = make_manifest(tmp_path / "data", n_cases=2)
    if problem == "no_signal":
        bad = tmp_path / "data" / "case_001_image.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), bad)
        needle = f"vox2vox train: warning: {bad}: no signal in the image channel"
    else:
        for i in range(2):
            nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.uint8), np.eye(4)),
                     tmp_path / "data" / f"case_00{i}_seg.nii.gz")
        needle = f"vox2vox train: warning: {manifest}: no case has any foreground label"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", tmp_path / "run", *TINY)
    assert code == 0, err
    warned = [line for line in err.splitlines() if ": warning: " in line]
    assert len(warned) == 1 and warned[0].startswith(needle), err


def _loaded(case_id, label):
    from vox2vox.data.preprocessing import LoadedCase

    return LoadedCase(case_id, np.zeros((1, *label.shape), np.float32), label.astype(np.int64), geometry=None)


def _tumour(values_by_radius, shape=(24, 24, 24)):
    """A label map of nested balls: ``[(radius, value), ...]`` from the outside in."""
    grid = np.linalg.norm(np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2, axis=0)
    label = np.zeros(shape, np.int64)
    for radius, value in values_by_radius:
        label[grid <= radius] = value
    return label


def test_label_maps_labelled_two_ways_are_named_in_one_line():
    from vox2vox.data.checking import disagreeing_labellings

    values = (0, 1, 2, 3, 4)
    whole = {f"wt_{i}": _loaded(f"wt_{i}", _tumour([(8, 1)])) for i in range(3)}  # 1 = the whole tumour
    parts = {f"sub_{i}": _loaded(f"sub_{i}", _tumour([(9, 2), (5, 4), (2, 1)])) for i in range(2)}  # 1 = necrosis
    [line] = disagreeing_labellings({**whole, **parts}, values, where="data/manifest.csv")
    assert line.startswith("data/manifest.csv: the label maps look labelled two ways: wt_0, wt_1, wt_2 hold only label 1")
    assert "[1, 2, 4]" in line and "\n" not in line
    # A case that lacks some sub-regions (a small lesion with oedema only) is normal: no warning.
    oedema_only = {"small": _loaded("small", _tumour([(4, 2)]))}
    assert disagreeing_labellings({**oedema_only, **parts}, values, where="d") == []
    # One labelling throughout: no warning.
    assert disagreeing_labellings(whole, values, where="d") == [] == disagreeing_labellings(parts, values, where="d")


def test_the_shared_brats_sources_are_labelled_two_ways(shared_data):
    from vox2vox.data.checking import disagreeing_labellings
    from vox2vox.data.io import read_volume

    files = {"case_0": shared_data / "brats2018-deepvoxnet2" / "case_0" / "GT_W.nii.gz",
             "pat0005": shared_data / "brats2015-deepmedic" / "brats_2013_pat0005_1" / "OTMultiClass.nii.gz"}
    cases = {k: _loaded(k, np.rint(read_volume(path)[0]).astype(np.int64)) for k, path in files.items()}
    [line] = disagreeing_labellings(cases, (0, 1, 2, 3, 4), where="shared")
    assert "case_0 hold only label 1" in line


def test_training_on_labels_written_two_ways_warns(tmp_path, capsys):
    from helpers import TINY, cli, make_manifest

    manifest = make_manifest(tmp_path / "data", n_cases=3)
    nib.save(nib.Nifti1Image(_tumour([(6, 2), (4, 4), (1.5, 1)], shape=(16, 16, 16)).astype(np.uint8), np.eye(4)),
             tmp_path / "data" / "case_002_seg.nii.gz")
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", tmp_path / "run", *TINY)
    assert code == 0, err
    warned = [line for line in err.splitlines() if ": warning: " in line]
    assert len(warned) == 1 and f"{manifest}: the label maps look labelled two ways" in warned[0], err


def test_cpu_bf16_runs_the_generator_in_bf16_and_keeps_the_critic_in_float32():
    # Under bf16 autocast on a CPU the critic's weight gradients turned non-finite within ~100
    # adversarial steps (docs/method.md, "Self-configuration"): the critic stays float32 there.
    config = Config.from_dict({
        "generator": {"arch": "residual", "in_channels": 1, "n_classes": 2, "base_filters": 4, "max_filters": 16,
                      "depth": 2, "dropout": 0.0},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": 4, "max_filters": 16, "dropout": 0.0},
        "loss": {"dice": "per_sample", "lambda_adv": 0.1, "adversarial_start": 0.0},
        "train": {"patch_size": [32, 32, 32], "batch_size": 1, "device": "cpu", "amp": "bf16"},
    })
    state = build_state(config)
    dtypes: dict[str, torch.dtype] = {}
    for name, net in (("G", state.generator), ("D", state.discriminator)):
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
        conv.register_forward_hook(lambda m, i, o, name=name: dtypes.setdefault(name, o.dtype) and None)
    out = train_step(state, torch.randn(1, 1, 32, 32, 32), torch.randint(0, 2, (1, 32, 32, 32)), config, progress=1.0)
    assert dtypes == {"G": torch.bfloat16, "D": torch.float32}
    assert "loss_adv" in out and all(np.isfinite(v) for v in out.values())


def test_a_metric_logged_on_some_steps_is_averaged_over_those_steps(tmp_path, monkeypatch):
    # Under discriminator.update_every the critic's losses come every other step: their epoch mean
    # is over the steps that logged them, not over all steps.
    real_step = training.train_step
    calls = {"n": 0}

    def alternating(state, *args, **kwargs):
        real_step(state, *args, **kwargs)
        calls["n"] += 1
        return {"loss_g": 1.0, **({"loss_d": 2.0} if calls["n"] % 2 else {})}

    monkeypatch.setattr(training, "train_step", alternating)
    result = run_fit(fit_config(1), tmp_path / "run")
    row = result.history[-1]
    assert calls["n"] >= 2 and row["loss_g"] == 1.0 and row["loss_d"] == 2.0
