"""Losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vox2vox.errors import Vox2VoxError
from vox2vox.model.losses import (
    LossConfig,
    discriminator_accuracy,
    fixed_class_weights,
    generalized_dice_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    one_hot,
)


def tiny_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, four voxels in a (1, 2, 1, 1, 4) volume: labels [0, 0, 0, 1]."""
    target = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).reshape(1, 2, 1, 1, 4)
    probs = torch.tensor([[0.9, 0.6, 0.2, 0.3], [0.1, 0.4, 0.8, 0.7]]).reshape(1, 2, 1, 1, 4)
    return target, probs


# Per class: intersection I_c = sum(y p), denominator S_c = sum(y + p).
# class 0: I = 0.9 + 0.6 + 0.2 = 1.7;  S = 3 + (0.9 + 0.6 + 0.2 + 0.3) = 5.0
# class 1: I = 0.7;                    S = 1 + (0.1 + 0.4 + 0.8 + 0.7) = 3.0
I0, S0, I1, S1 = 1.7, 5.0, 0.7, 3.0


def gdl(w0: float, w1: float) -> float:
    return 1.0 - 2.0 * (w0 * I0 + w1 * I1) / (w0 * S0 + w1 * S1)


def test_gdl_uniform_weights_by_hand():
    target, probs = tiny_case()
    loss = generalized_dice_loss(target, probs, weighting="uniform", eps=0.0)
    assert loss.item() == pytest.approx(gdl(1.0, 1.0), abs=1e-6)
    assert loss.item() == pytest.approx(1.0 - 2.0 * 2.4 / 8.0, abs=1e-6)


def test_gdl_fixed_weights_by_hand():
    target, probs = tiny_case()
    weights = torch.tensor([0.25, 2.0])
    loss = generalized_dice_loss(target, probs, weighting="fixed", class_weights=weights, eps=0.0)
    assert loss.item() == pytest.approx(gdl(0.25, 2.0), abs=1e-6)
    assert loss.item() == pytest.approx(1.0 - 2.0 * (0.425 + 1.4) / (1.25 + 6.0), abs=1e-6)


def test_gdl_sudre_weights_by_hand():
    target, probs = tiny_case()
    loss = generalized_dice_loss(target, probs, weighting="sudre", eps=0.0)
    # w_c = 1 / (sum y_c)^2: 1/9 for class 0 (three voxels), 1 for class 1 (one voxel).
    assert loss.item() == pytest.approx(gdl(1.0 / 9.0, 1.0), abs=1e-6)


def test_gdl_sums_over_the_whole_batch():
    target, probs = tiny_case()
    # Two copies in a batch: every sum doubles, so the ratio (and the loss) is unchanged.
    loss = generalized_dice_loss(torch.cat([target, target]), torch.cat([probs, probs]), weighting="uniform", eps=0.0)
    assert loss.item() == pytest.approx(gdl(1.0, 1.0), abs=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "sudre", "fixed"])
def test_gdl_is_zero_for_a_perfect_prediction(weighting):
    label = torch.randint(0, 4, (2, 6, 5, 4), generator=torch.Generator().manual_seed(0))
    target = one_hot(label, 4)
    weights = torch.tensor([0.3, 40.0, 15.0, 50.0])
    loss = generalized_dice_loss(target, target.clone(), weighting=weighting, class_weights=weights)
    assert abs(loss.item()) < 1e-6


def test_gdl_sudre_gives_absent_classes_the_largest_present_weight():
    target, probs = tiny_case()
    target3 = torch.cat([target, torch.zeros(1, 1, 1, 1, 4)], dim=1)
    probs3 = torch.cat([probs * 0.8, torch.full((1, 1, 1, 1, 4), 0.2)], dim=1)
    loss = generalized_dice_loss(target3, probs3, weighting="sudre", eps=0.0)
    i = [0.8 * I0, 0.8 * I1, 0.0]
    s = [3.0 + 0.8 * 2.0, 1.0 + 0.8 * 2.0, 0.8]
    w = [1 / 9, 1.0, 1.0]
    expected = 1 - 2 * sum(a * b for a, b in zip(w, i, strict=True)) / sum(a * b for a, b in zip(w, s, strict=True))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_gdl_errors():
    target, probs = tiny_case()
    with pytest.raises(Vox2VoxError, match="class_weights"):
        generalized_dice_loss(target, probs, weighting="fixed")
    with pytest.raises(Vox2VoxError, match="differ"):
        generalized_dice_loss(target, probs[:, :1], weighting="uniform")


def test_fixed_class_weights_on_a_known_label_set():
    labels = [np.array([0, 0, 0, 0, 0, 1, 1, 2]), np.array([[0, 0], [1, 2]])]
    # counts: class 0 -> 7, class 1 -> 3, class 2 -> 2; 12 voxels; w_c = 12 / (3 * n_c).
    weights = fixed_class_weights(labels, 3)
    assert weights == pytest.approx((12 / 21, 12 / 9, 12 / 6))
    # A class that never occurs gets weight 0 rather than infinity.
    assert fixed_class_weights([np.array([0, 0, 1, 1])], 3) == pytest.approx((2 / 3, 2 / 3, 0.0))


def test_fixed_class_weights_rejects_labels_outside_the_classes():
    with pytest.raises(Vox2VoxError, match=r"0\.\.3"):
        fixed_class_weights([np.array([0, 1, 2, 4])], 4)  # BraTS label 4 not mapped to 3
    with pytest.raises(Vox2VoxError, match="no labelled voxels"):
        fixed_class_weights([np.zeros(0, dtype=np.int64)], 2)


def test_lsgan_losses_on_known_tensors():
    real = torch.tensor([1.0, 0.5, 2.0])
    fake = torch.tensor([0.0, 1.0, -1.0, 0.5])
    # real: (0 + 0.25 + 1) / 3; fake: (0 + 1 + 1 + 0.25) / 4
    expected_d = 0.5 * (1.25 / 3 + 2.25 / 4)
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(expected_d)
    # generator: mean((1 - fake)^2) = (1 + 0 + 4 + 0.25) / 4
    assert lsgan_generator_loss(fake).item() == pytest.approx(5.25 / 4)
    assert lsgan_discriminator_loss(torch.ones(3), torch.zeros(3)).item() == 0.0
    assert lsgan_generator_loss(torch.ones(2, 1, 3, 3, 3)).item() == 0.0
    half = torch.tensor([1.0, 2.0], dtype=torch.float16)
    assert lsgan_generator_loss(half).dtype == torch.float32


def test_discriminator_accuracy():
    real = torch.tensor([0.9, 0.4, 0.6, 1.2])  # 3 of 4 judged real (> 0.5)
    fake = torch.tensor([0.1, 0.7, -0.3, 0.2])  # 3 of 4 judged fake (< 0.5)
    assert discriminator_accuracy(real, fake).item() == pytest.approx(6 / 8)
    assert discriminator_accuracy(torch.ones(5), torch.zeros(3)).item() == 1.0
    assert discriminator_accuracy(torch.zeros(5), torch.ones(3)).item() == 0.0


def test_one_hot_layout():
    label = torch.tensor([[[[0, 2], [1, 1]]]])  # (B=1, D=1, H=2, W=2)
    out = one_hot(label, 3)
    assert out.shape == (1, 3, 1, 2, 2)
    assert out[0, :, 0, 0, 1].tolist() == [0.0, 0.0, 1.0]
    assert out.sum(dim=1).eq(1).all()


def test_loss_config_checks():
    with pytest.raises(Vox2VoxError, match="dice_weighting"):
        LossConfig(dice_weighting="dice")
    with pytest.raises(Vox2VoxError, match="lambda_dice"):
        LossConfig(lambda_dice=-1.0)
    with pytest.raises(Vox2VoxError, match="nothing is trained"):
        LossConfig(adversarial=False, lambda_dice=0.0)


def test_gdl_sudre_eps_is_negligible_at_realistic_volume_sizes():
    # 64^3 voxels with a rare class: raw 1 / count^2 weights are ~1e-8, comparable to eps.
    label = torch.zeros(1, 64, 64, 64, dtype=torch.long)
    label[0, :8, :8, :8] = 1
    target = one_hot(label, 2)
    probs = 0.9 * target + 0.05
    with_eps = generalized_dice_loss(target, probs, weighting="sudre", eps=1e-6)
    without = generalized_dice_loss(target, probs, weighting="sudre", eps=0.0)
    assert with_eps.item() == pytest.approx(without.item(), rel=1e-4)
    assert generalized_dice_loss(target, target, weighting="sudre").item() < 1e-6


def test_cross_entropy_from_probs_matches_torch_on_logits():
    from vox2vox.model.losses import cross_entropy_from_probs

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    label = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    ours = cross_entropy_from_probs(one_hot(label, 3), torch.softmax(logits, 1))
    assert torch.allclose(ours, torch.nn.functional.cross_entropy(logits, label), atol=1e-5)
    # A confidently wrong voxel is bounded by the floor, not infinite.
    wrong = cross_entropy_from_probs(one_hot(torch.zeros(1, 1, 1, 1), 2), torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1))
    assert torch.isfinite(wrong) and wrong > 15


def test_loss_config_cross_entropy_weight():
    with pytest.raises(Vox2VoxError, match="lambda_ce"):
        LossConfig(lambda_ce=-0.5)
    # Cross-entropy alone is a valid objective for the generator.
    assert LossConfig(adversarial=False, lambda_dice=0.0, lambda_ce=1.0).lambda_ce == 1.0


# ---- the ignore label: a mask of the voxels that count (issue 13) ---------------------------------
def _ignored_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 4, 4, 4))
    label[:, :2] = -1  # half the voxels carry the ignore label
    probs = torch.softmax(torch.randn(2, 3, 4, 4, 4), dim=1)
    return label, probs


def test_labelled_mask_and_one_hot_leave_out_the_ignore_label():
    from vox2vox.model.losses import labelled_mask

    label, _ = _ignored_batch()
    mask = labelled_mask(label)
    assert mask.shape == (2, 1, 4, 4, 4) and float(mask.sum()) == 2 * 2 * 4 * 4
    assert labelled_mask(label.clamp_min(0)) is None
    encoded = one_hot(label, 3)
    assert float(encoded[:, :, :2].abs().sum()) == 0.0
    assert torch.equal(encoded[:, :, 2:], one_hot(label[:, 2:], 3))


def test_masked_losses_equal_the_losses_of_the_labelled_voxels_alone():
    from vox2vox.model.losses import cross_entropy_from_probs, labelled_mask

    label, probs = _ignored_batch()
    mask = labelled_mask(label)
    target = one_hot(label, 3)
    kept_target, kept_probs = one_hot(label[:, 2:], 3), probs[:, :, 2:]
    for weighting in ("uniform", "sudre"):
        masked = generalized_dice_loss(target, probs, weighting=weighting, mask=mask)
        alone = generalized_dice_loss(kept_target, kept_probs, weighting=weighting)
        assert torch.allclose(masked, alone)
        # Changing the prediction where the label is ignored changes nothing.
        other = probs.clone()
        other[:, :, :2] = torch.softmax(torch.randn(2, 3, 2, 4, 4), dim=1)
        assert torch.allclose(generalized_dice_loss(target, other, weighting=weighting, mask=mask), masked)
    ce = cross_entropy_from_probs(target, probs, mask=mask)
    assert torch.allclose(ce, cross_entropy_from_probs(kept_target, kept_probs))


def test_masked_per_sample_dice_equals_the_labelled_voxels_alone():
    from vox2vox.model.losses import labelled_mask, per_sample_dice_loss

    label, probs = _ignored_batch()
    mask = labelled_mask(label)
    target = one_hot(label, 3)
    masked = per_sample_dice_loss(target, probs, mask=mask)
    alone = per_sample_dice_loss(one_hot(label[:, 2:], 3), probs[:, :, 2:])
    assert torch.allclose(masked, alone)
    # The prediction where the label is ignored changes nothing; without the mask it would.
    other = probs.clone()
    other[:, :, :2] = torch.softmax(torch.randn(2, 3, 2, 4, 4), dim=1)
    assert torch.allclose(per_sample_dice_loss(target, other, mask=mask), masked)
    assert not torch.allclose(per_sample_dice_loss(target, other), per_sample_dice_loss(target, probs))


def test_fixed_class_weights_skip_the_ignore_label():
    labels = [np.array([[-1, 0, 1, 1]])]
    assert fixed_class_weights(labels, 2) == fixed_class_weights([np.array([[0, 1, 1]])], 2)
