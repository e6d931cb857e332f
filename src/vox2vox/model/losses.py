"""Vox2Vox losses: least-squares GAN terms and the generalized Dice loss (docs/method.md, "Losses").

All functions take and return float32 tensors; call them outside autocast regions (or they cast)
so that sums over 128^3 voxels do not overflow in half precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from monai.losses import DiceLoss

from vox2vox.data.settings import setting
from vox2vox.errors import Vox2VoxError

DiceWeighting = Literal["fixed", "sudre", "uniform"]


@dataclass(frozen=True)
class LossConfig:
    """Generator objective = ``lambda_adv`` * [adversarial] + ``lambda_dice`` * Dice + ``lambda_ce`` * CE.

    Paper: lambda_adv = 1, lambda_dice = 5, the generalized Dice loss, no cross-entropy, the
    adversarial term from the first step. ``dice="per_sample"`` replaces the GDL's one ratio over
    the batch by the mean over samples and classes of each one's soft Dice (MONAI's
    ``DiceLoss(batch=False)``), which does not let one large case or class drown a small one.
    ``adversarial_start`` is the fraction of training (epochs or budget) before the adversarial
    term and the discriminator start: until then a step is a plain segmentation step. ``lambda_ce > 0`` adds the voxel-wise cross-entropy
    that Dice+CE segmenters (nnU-Net, MONAI ``DiceCELoss``) pair with the Dice term: a per-voxel,
    calibrated signal where the GDL's ratio over the whole batch rewards over-segmenting small
    targets (benchmarks/RESULTS.md, quality study).
    """

    adversarial: bool = setting(True, "train with the discriminator (false: the generator alone on the Dice/CE terms)")
    dice: Literal["generalized", "per_sample"] = setting(
        "generalized",
        "generalized (the paper's one ratio over the batch) or per_sample (mean soft Dice per sample "
        "and class)")
    lambda_adv: float = setting(1.0, "weight of the adversarial (LSGAN) term in the generator objective (paper: 1)")
    adversarial_start: float = setting(0.0, "fraction of training before the adversarial term and D start (paper: 0)")
    lambda_dice: float = setting(5.0, "weight of the Dice loss in the generator objective")
    lambda_ce: float = setting(0.0, "weight of the voxel-wise cross-entropy (0: off, as the paper)")
    # pix2pixHD's feature matching: L1 between the critic's hidden activations on the real and the
    # fake pair, added to the generator's objective with this weight while the critic runs (0: off).
    lambda_fm: float = setting(
        0.0,
        "weight of pix2pixHD's feature matching: L1 between the critic's hidden activations on the "
        "real and the fake pair, while the critic runs (0: off)")
    dice_weighting: DiceWeighting = setting("fixed", "class weights of the generalized Dice: fixed, sudre or uniform")
    # Filled from the training labels when ``dice_weighting == "fixed"`` (w_c = N / (C * n_c)).
    class_weights: tuple[float, ...] | None = setting(
        None,
        "fixed class weights; null: computed from the training labels (N / (C * n_c))", within=(0.0, 1000000.0))
    eps: float = setting(1e-6, "smoothing term of the Dice ratio", within=(1e-12, 1.0))

    def __post_init__(self) -> None:
        if self.dice_weighting not in ("fixed", "sudre", "uniform"):
            raise Vox2VoxError(f"loss.dice_weighting={self.dice_weighting!r}: choose fixed, sudre or uniform")
        if self.dice not in ("generalized", "per_sample"):
            raise Vox2VoxError(f"loss.dice={self.dice!r}: choose generalized or per_sample")
        if not self.lambda_adv >= 0:
            raise Vox2VoxError(f"loss.lambda_adv={self.lambda_adv}: must be >= 0")
        if not 0.0 <= self.adversarial_start < 1.0:
            raise Vox2VoxError(f"loss.adversarial_start={self.adversarial_start}: must be in [0, 1)")
        if self.lambda_dice < 0:
            raise Vox2VoxError(f"loss.lambda_dice={self.lambda_dice}: must be >= 0")
        if not self.lambda_ce >= 0:
            raise Vox2VoxError(f"loss.lambda_ce={self.lambda_ce}: must be >= 0")
        if not self.lambda_fm >= 0:
            raise Vox2VoxError(f"loss.lambda_fm={self.lambda_fm}: must be >= 0")
        if not self.adversarial and self.lambda_dice == 0 and self.lambda_ce == 0:
            raise Vox2VoxError("loss: with adversarial=false, lambda_dice or lambda_ce must be > 0 or nothing is trained")


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """0.5 * [mean((1 - D(x, y))^2) + mean(D(x, G(x))^2)]."""
    real_scores, fake_scores = real_scores.float(), fake_scores.float()
    return 0.5 * ((1.0 - real_scores).square().mean() + fake_scores.square().mean())


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """mean((1 - D(x, G(x)))^2): the generator wants its pairs judged real."""
    return (1.0 - fake_scores.float()).square().mean()


def feature_matching_loss(fake_features: list[torch.Tensor], real_features: list[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD's feature matching: the mean over the critic's hidden layers of the L1 distance
    between the fake pair's activations and the real pair's (a target: no gradient flows into it)."""
    terms = [torch.mean(torch.abs(f.float() - r.detach().float())) for f, r in zip(fake_features, real_features, strict=True)]
    return torch.stack(terms).mean()


def discriminator_accuracy(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Fraction of patches judged correctly (real > 0.5, fake < 0.5), over both pairs."""
    correct = (real_scores > 0.5).float().sum() + (fake_scores < 0.5).float().sum()
    return correct / (real_scores.numel() + fake_scores.numel())


def generalized_dice_loss(
    target: torch.Tensor,
    probs: torch.Tensor,
    *,
    weighting: DiceWeighting = "fixed",
    class_weights: torch.Tensor | None = None,
    eps: float = 1e-6,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """1 - 2 * sum_c w_c sum(y p) / (sum_c w_c sum(y + p) + eps), over the whole batch.

    ``mask`` (see :func:`labelled_mask`) leaves out voxels carrying the ignore label.

    ``target`` and ``probs`` are ``(B, C, D, H, W)`` (one-hot and softmax); every class including
    background counts, as in the authors' implementation. ``weighting``:
    ``fixed`` uses ``class_weights`` (computed once from the training labels),
    ``sudre`` recomputes w_c = 1 / (sum y_c)^2 per batch (Sudre et al. 2017; classes absent from
    the batch get the largest weight present, so they neither vanish nor explode; the weights are
    rescaled to mean 1 so that ``eps`` stays negligible),
    ``uniform`` uses w_c = 1.
    """
    sums = dice_sums(target, probs, mask=mask)
    return dice_loss_from_sums(sums, weighting=weighting, class_weights=class_weights, eps=eps)


def dice_sums(target: torch.Tensor, probs: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class sums over batch and space: a ``(3, C)`` stack of sum(y p), sum(y + p), sum(y).

    Sums add up across batch shards, so data-parallel training can all-reduce them and get the
    loss of the whole batch (see ``distributed.batch_dice_loss``). ``mask`` ``(B, 1, D, H, W)``
    (1 = counts, 0 = ignore label) drops voxels from every sum.
    """
    if target.shape != probs.shape:
        raise Vox2VoxError(f"dice loss: target {tuple(target.shape)} and prediction {tuple(probs.shape)} differ")
    target, probs = target.float(), probs.float()
    if mask is not None:
        target, probs = target * mask, probs * mask
    dims = [0, *range(2, target.ndim)]
    return torch.stack([(target * probs).sum(dims), (target + probs).sum(dims), target.sum(dims)])


def dice_loss_from_sums(
    sums: torch.Tensor,
    *,
    weighting: DiceWeighting,
    class_weights: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """The generalized Dice loss from :func:`dice_sums` (see :func:`generalized_dice_loss`)."""
    intersection, denominator, counts = sums
    if weighting == "fixed":
        if class_weights is None:
            raise Vox2VoxError("dice loss: weighting 'fixed' needs class_weights (compute them from the training labels)")
        w = class_weights.to(sums.device, torch.float32)
    elif weighting == "sudre":
        counts = counts.detach()
        w = 1.0 / counts.clamp_min(1.0).square()
        present = counts > 0
        if present.any():
            w = torch.where(present, w, w[present].max())
        # The loss is invariant to the scale of w except through eps, and 1 / count^2 is tiny
        # (1e-8 for 1e4 voxels), which would let eps dominate: rescale to mean 1 like the others.
        w = w * (w.numel() / w.sum())
    elif weighting == "uniform":
        w = torch.ones_like(intersection)
    else:
        raise Vox2VoxError(f"dice loss: unknown weighting {weighting!r}")
    return 1.0 - 2.0 * (w * intersection).sum() / ((w * denominator).sum() + eps)


def per_sample_dice_loss(
    target: torch.Tensor, probs: torch.Tensor, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over samples and classes of 1 - soft Dice, each over its own voxels (MONAI's DiceLoss
    with ``batch=False``; smoothing 1e-5 so an absent class predicted absent costs nothing).

    ``mask`` (see :func:`labelled_mask`) leaves out voxels carrying the ignore label, as MONAI's
    ``MaskedDiceLoss`` does: both tensors are zeroed there before the sums.
    """
    if target.shape != probs.shape:
        raise Vox2VoxError(f"dice loss: target {tuple(target.shape)} and prediction {tuple(probs.shape)} differ")
    target, probs = target.float(), probs.float()
    if mask is not None:
        target, probs = target * mask, probs * mask
    return _PER_SAMPLE_DICE(probs, target)


_PER_SAMPLE_DICE = DiceLoss(include_background=True, softmax=False, batch=False, smooth_nr=1e-5, smooth_dr=1e-5)


def cross_entropy_from_probs(
    target: torch.Tensor, probs: torch.Tensor, *, floor: float = 1e-7, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over voxels of ``-sum_c y_c log p_c`` for one-hot ``target`` and softmax ``probs``.

    Both ``(B, C, D, H, W)``; the generator returns probabilities, so the log is taken here, with
    ``p`` floored at ``floor`` (float32) so a confidently wrong voxel costs about 16, not infinity.
    With ``mask`` (see :func:`labelled_mask`) the mean runs over the labelled voxels only.
    """
    log_p = probs.float().clamp_min(floor).log()
    per_voxel = -(target.float() * log_p).sum(dim=1)
    if mask is None:
        return per_voxel.mean()
    keep = mask.float().squeeze(1)
    return (per_voxel * keep).sum() / keep.sum().clamp_min(1.0)


def binary_cross_entropy_from_probs(
    target: torch.Tensor, probs: torch.Tensor, *, floor: float = 1e-7, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over voxels and outputs of ``-[y log p + (1 - y) log(1 - p)]``: the cross-entropy of
    independent sigmoid outputs (region-based training, :mod:`vox2vox.model.outputs`), with ``p``
    kept in ``[floor, 1 - floor]`` as :func:`cross_entropy_from_probs` floors it."""
    p = probs.float().clamp(floor, 1.0 - floor)
    y = target.float()
    per_voxel = -(y * p.log() + (1.0 - y) * (1.0 - p).log()).mean(dim=1)
    if mask is None:
        return per_voxel.mean()
    keep = mask.float().squeeze(1)
    return (per_voxel * keep).sum() / keep.sum().clamp_min(1.0)


def labelled_mask(label: torch.Tensor) -> torch.Tensor | None:
    """``(B, 1, D, H, W)`` float mask of the voxels that count in the losses: 0 where ``label`` is
    negative (the ignore label, class index -1), else 1. None when every voxel counts."""
    keep = label >= 0
    if bool(keep.all()):
        return None
    return keep.unsqueeze(1).float()


def fixed_class_weights(labels: list[np.ndarray], n_classes: int, *,
                        membership: np.ndarray | None = None) -> tuple[float, ...]:
    """w_c = n_voxels / (n_classes * count_c) over all training label maps (class indices).

    With ``membership`` ``(n_classes, n_outputs)`` (region-based training, see
    :class:`vox2vox.model.outputs.OutputHead`) the counts are those of each output's region and
    there is one weight per output.

    Classes that never occur get weight 0 (they cannot be balanced and must not divide by zero);
    BraTS crops give about [0.26, 45.5, 16.5, 49.1] (docs/method.md, "Losses").
    """
    counts = np.zeros(n_classes, dtype=np.float64)
    for label in labels:
        values = np.asarray(label).ravel().astype(np.int64)
        values = values[values != -1]  # the ignore label (class index -1) is not balanced
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            # e.g. a BraTS label 4 not mapped to 3: silently dropping it would skew the weights.
            raise Vox2VoxError(
                f"training labels hold values {sorted(set(np.unique(values).tolist()))}, outside the "
                f"classes 0..{n_classes - 1}; map the labels to contiguous classes first"
            )
        counts += np.bincount(values, minlength=n_classes)
    total = counts.sum()
    if total == 0:
        raise Vox2VoxError("no labelled voxels in the training data; cannot compute class weights")
    if membership is not None:
        counts = counts @ np.asarray(membership, dtype=np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, total / (len(counts) * np.maximum(counts, 1)), 0.0)
    return tuple(float(w) for w in weights)


def one_hot(label: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, D, H, W)`` integer classes -> ``(B, C, D, H, W)`` float one-hot.

    Negative labels (the ignore label) get an all-zero vector.
    """
    label = label.long()
    encoded = torch.nn.functional.one_hot(label.clamp_min(0), n_classes).movedim(-1, 1).float()
    return encoded * (label >= 0).unsqueeze(1) if bool((label < 0).any()) else encoded
