"""Built-in adversarial attacks: FGSM, PGD, SegPGD and a random-sign baseline.

Threat model: white-box, untargeted, L-infinity. The attacker knows the model and its
weights and changes each pixel value of the image the model sees (the letterboxed
``S x S`` batch, padding included, as float values in 0..255 before the model's
mean/std) by at most ``eps`` grey levels; the result is clipped to 0..255 and is not
rounded back to uint8 (so budgets under one grey level are real). The loss is the
per-pixel cross-entropy against the ground truth at the model's input resolution,
averaged over each image's scored pixels: void and padding (label 255) are left out.
Gradients are taken in fp32 (no autocast: bf16 gradients weaken the attack), through
a model's frozen backbone; a point model keeps its click (the ``point`` input is not
attacked). Each image's loss depends on that image only, so the attack of one image
does not depend on its batch.

Budgets ``eps`` (the level values, grey levels of 0..255): 0 (clean), 0.25, 0.5, 1, 2,
3, 4, 6, 8, 16: from below one quantisation step to the 16/255 of the classification
literature, dense where small models tend to break.

- ``adv_fgsm`` (Goodfellow et al., 2015): ``x' = clip(x + eps * sign(grad L(x)))``.
- ``adv_pgd`` (Madry et al., 2018): a uniformly random start in the eps-ball, then
  ``PGD_STEPS`` = 10 steps of size ``alpha = eps / 4`` (2.5 eps / steps), each
  ``x <- clip(proj_eps(x + alpha * sign(grad L(x))))``; the last iterate is returned.
- ``adv_segpgd`` (Gu et al., ECCV 2022): PGD with the same start, steps and step size
  on the loss that weighs correctly and wrongly classified pixels differently,
  ``L_t = (1 - lambda_t) / N * sum_{j correct} CE_j + lambda_t / N * sum_{k wrong} CE_k``,
  ``lambda_t = (t - 1) / (2 T)`` at step t = 1..T: first the still-correct pixels only,
  then more and more of the already-fooled ones (weights at most 1/2).
- ``adv_random_sign``: no gradient: ``x' = clip(x + eps * s)``, ``s`` uniformly random
  signs (+-1 per value), the same L-infinity norm as the attacks: how much of their
  damage is the budget alone.

Random draws (PGD's start, the random signs) come from each image's own generator,
seeded by (run seed, attack, level, image, model). The attacks are written here rather
than taken from torchattacks: its PGD draws the random start from torch's global
generator (not per image), and its cross-entropy has no ignore index (void and padding
would be attacked and scored); ``tests/test_adversarial.py`` checks this PGD against
torchattacks' on the same inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

from petseg_bench import hookimpl
from petseg_bench.specs import PerturbationSpec

#: The L-infinity budgets in grey levels (0..255) of the image the model sees; level 0 is clean.
BUDGETS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0)
#: PGD's and SegPGD's number of steps, and the step size as a share of the budget.
PGD_STEPS = 10
STEP_FRACTION = 0.25
IGNORE = 255
FAMILY, FAMILY_LABEL = "adversarial", "Adversarial attacks (L-inf, white-box)"


def pixel_loss(logits, labels, kind: str = "ce", t: int = 1, steps: int = 1):
    """Per image, the attack's loss ``[B]``: cross-entropy averaged over the scored pixels
    (label != 255); ``kind="segpgd"`` weighs correct pixels ``1 - lambda`` and wrong ones
    ``lambda``, ``lambda = (t - 1) / (2 * steps)``."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")  # 0 where ignored
    valid = labels != IGNORE
    if kind == "segpgd":
        lam = (t - 1) / (2 * steps)
        correct = logits.detach().argmax(1) == labels
        ce = ce * torch.where(correct, 1.0 - lam, lam)
    elif kind != "ce":
        raise ValueError(f"unknown attack loss {kind!r}")
    return (ce * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)


def _uniform(rngs: Sequence, shape, eps: float, like):
    """Per image, uniform noise in [-eps, eps] from its own generator (float32)."""
    import numpy as np
    import torch

    noise = np.stack([rng.uniform(-eps, eps, size=shape).astype(np.float32) for rng in rngs])
    return torch.from_numpy(noise).to(like.device)


def pgd(forward: Callable, images, labels, eps: float, rngs: Sequence, steps: int = PGD_STEPS,
        step_size: float | None = None, loss: str = "ce", random_start: bool = True, trace: list | None = None):
    """Projected gradient ascent in the L-inf ball of radius ``eps`` around ``images``
    (float ``[B, 3, S, S]`` in 0..255), clipped to 0..255; the last iterate. ``trace``,
    if given, gets the per-image loss ``[B]`` at each step's start and at the end."""
    import torch

    eps = float(eps)
    x0 = images.detach().float()
    if eps == 0 or steps == 0:
        return x0.clone()
    alpha = STEP_FRACTION * eps if step_size is None else float(step_size)
    lo, hi = (x0 - eps).clamp(min=0.0), (x0 + eps).clamp(max=255.0)
    x = x0.clone()
    if random_start:
        x = torch.minimum(torch.maximum(x0 + _uniform(rngs, x0.shape[1:], eps, x0), lo), hi)
    for t in range(1, steps + 1):
        x.requires_grad_(True)
        with torch.enable_grad():
            per_image = pixel_loss(forward(x), labels, loss, t, steps)
            grad, = torch.autograd.grad(per_image.sum(), x)
        if trace is not None:
            trace.append(per_image.detach())
        x = torch.minimum(torch.maximum(x.detach() + alpha * grad.sign(), lo), hi)
    if trace is not None:
        with torch.no_grad():
            trace.append(pixel_loss(forward(x), labels, loss, steps, steps).detach())
    return x


def fgsm(forward: Callable, images, labels, value: float, rngs: Sequence):
    """One signed-gradient step of the full budget from the clean image."""
    return pgd(forward, images, labels, value, rngs, steps=1, step_size=value, random_start=False)


def pgd_attack(forward: Callable, images, labels, value: float, rngs: Sequence):
    """PGD: random start, :data:`PGD_STEPS` steps of ``eps / 4``, cross-entropy."""
    return pgd(forward, images, labels, value, rngs)


def segpgd_attack(forward: Callable, images, labels, value: float, rngs: Sequence):
    """SegPGD: PGD's start, steps and step size on SegPGD's weighted loss."""
    return pgd(forward, images, labels, value, rngs, loss="segpgd")


def random_sign(forward: Callable, images, labels, value: float, rngs: Sequence):
    """``eps`` times uniformly random signs, clipped: the budget without the gradient."""
    import numpy as np
    import torch

    eps = float(value)
    x0 = images.detach().float()
    if eps == 0:
        return x0.clone()
    signs = np.stack([rng.integers(0, 2, size=x0.shape[1:], dtype=np.int8) * 2 - 1 for rng in rngs])
    return (x0 + eps * torch.from_numpy(signs.astype(np.float32)).to(x0.device)).clamp(0.0, 255.0)


#: name -> (attack function, one line for ``petseg-bench list``)
ATTACKS: dict[str, tuple[Callable, str]] = {
    "adv_fgsm": (fgsm, "FGSM: one signed-gradient step of the full L-inf budget (grey levels of the model's input)"),
    "adv_pgd": (pgd_attack, f"PGD: random start, {PGD_STEPS} steps of eps/4, L-inf budget in grey levels, fp32 "
                            "gradients through frozen backbones"),
    "adv_segpgd": (segpgd_attack, f"SegPGD (Gu et al. 2022): PGD ({PGD_STEPS} steps of eps/4) on a loss weighing "
                                  "correct pixels 1-l and wrong ones l, l = (t-1)/(2T)"),
    "adv_random_sign": (random_sign, "baseline: uniformly random signs times the L-inf budget, no gradient"),
}


def _keep_pixels(images: Sequence, value: float, rngs: Sequence) -> list:
    """The images unchanged: an attack acts on the model's input, per model."""
    return list(images)


def specs() -> list[PerturbationSpec]:
    return [PerturbationSpec(name, "eps (0-255)", BUDGETS, _keep_pixels, description, family=FAMILY,
                             family_label=FAMILY_LABEL, target="model", attack=fn)
            for name, (fn, description) in ATTACKS.items()]


@hookimpl
def petseg_bench_perturbations():
    return specs()
