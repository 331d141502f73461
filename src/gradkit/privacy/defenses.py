r"""Defences against gradient leakage, and the audit that compares them side by side.

A defence turns the gradient a client shares into something less revealing. Each is evaluated by
running the attacks of :mod:`gradkit.privacy.leakage` against the defended gradient:

* ``prune:P`` — gradient pruning (DLG paper §5, Zhu et al. 2019, its recommended defence; after
  Lin et al.'s Deep Gradient Compression): in every parameter tensor the fraction ``P`` of entries
  with the smallest magnitude is set to zero (per tensor; the paper does not say whether the
  threshold is per layer or global — per tensor is DGC's choice).
* ``noise:SIGMA[:C]`` — a real DP-SGD gradient (:class:`gradkit.privacy.DPOptimizer`):
  per-sample clipping to ``C`` (default 1), Gaussian noise with std ``SIGMA * C`` on the sum,
  divided by the batch size. This is the defence with a privacy guarantee.
* ``gauss:STD`` — additive Gaussian noise of std ``STD`` without clipping (the DLG paper's noise
  experiment; no guarantee, since the gradient is unbounded).
* ``topk:K`` — Top-K sparsification keeping the fraction ``K`` of largest-magnitude entries per
  tensor, with error feedback (Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory",
  NeurIPS 2018, arXiv:1809.07599): the residual of what was not sent is added to the next round's
  gradient. **The audit attacks a single round**, where the residual is still zero, so this is
  Top-K alone; error feedback matters for training accuracy, and over several rounds the leaked
  residual would add information an attacker could also use.
* ``quant:BITS`` — uniform symmetric per-tensor quantization to ``BITS`` bits (scale
  max|g| / (2^(BITS-1) - 1), round to nearest); ``fp16`` — half precision.
* ``batch:B`` — no transformation, but the client's gradient averages ``B`` images; the attack
  must reconstruct all ``B`` (scores are means over the batch after optimal matching).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from gradkit.privacy import leakage
from gradkit.privacy.leakage import Grads

KINDS = ("none", "prune", "noise", "gauss", "topk", "quant", "fp16", "batch")


# -- gradient transforms ----------------------------------------------------------------------
def prune(grads: Grads, ratio: float) -> Grads:
    """Zero the ``ratio`` fraction of smallest-magnitude entries of every tensor."""
    out = []
    for g in grads:
        k = math.ceil(ratio * g.numel())
        pruned = g.clone().flatten()
        pruned[g.abs().flatten().argsort()[:k]] = 0
        out.append(pruned.view_as(g))
    return out


def gaussian_noise(grads: Grads, std: float, generator: torch.Generator | None = None) -> Grads:
    return [g + std * torch.randn(g.shape, generator=generator, dtype=g.dtype) for g in grads]


class TopKWithErrorFeedback:
    """Top-K sparsification (fraction ``keep`` per tensor) with an error-feedback memory."""

    def __init__(self, keep: float):
        if not 0 < keep <= 1:
            raise ValueError(f"Invalid keep: {keep!r} (must be in (0, 1])")
        self.keep = keep
        self.residual: Grads | None = None

    def __call__(self, grads: Grads) -> Grads:
        corrected = (
            grads
            if self.residual is None
            else [g + r for g, r in zip(grads, self.residual, strict=True)]
        )
        sent = []
        for g in corrected:
            k = max(1, round(self.keep * g.numel()))
            flat = torch.zeros(g.numel(), dtype=g.dtype)
            top = g.abs().flatten().topk(k).indices
            flat[top] = g.flatten()[top]
            sent.append(flat.view_as(g))
        self.residual = [c - s for c, s in zip(corrected, sent, strict=True)]
        return sent


def quantize(grads: Grads, bits: int) -> Grads:
    """Uniform symmetric per-tensor quantization to ``bits`` bits (round to nearest)."""
    levels = 2 ** (bits - 1) - 1
    out = []
    for g in grads:
        scale = g.abs().max() / levels if levels > 0 else g.abs().max()
        out.append(g if scale == 0 else torch.round(g / scale) * scale)
    return out


def dp_sgd_gradient(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    noise_multiplier: float,
    max_grad_norm: float,
    generator: torch.Generator | None = None,
) -> Grads:
    """The gradient DP-SGD would share for this batch (the shipped :class:`DPOptimizer` path)."""
    from gradkit.privacy.dpsgd import DPOptimizer

    params = list(model.parameters())
    dp = DPOptimizer(
        torch.optim.SGD(params, lr=0.0),
        model,
        F.cross_entropy,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=images.shape[0],
        generator=generator,
    )
    dp.accumulate(images, labels)
    dp.privatize_gradients()
    grads = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None
    return grads


# -- parsing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Defense:
    """One parsed defence spec, e.g. ``Defense("prune", (0.9,))`` from ``"prune:0.9"``."""

    kind: str
    args: tuple[float, ...] = ()
    label: str = field(default="", compare=False)

    @property
    def batch_size(self) -> int:
        return int(self.args[0]) if self.kind == "batch" else 1

    def gradient(
        self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator
    ) -> Grads:
        """The gradient the client shares under this defence."""
        if self.kind == "noise":
            return dp_sgd_gradient(model, images, labels, *self.args, generator=generator)
        grads = leakage.batch_gradient(model, images, labels)
        if self.kind == "prune":
            return prune(grads, self.args[0])
        if self.kind == "gauss":
            return gaussian_noise(grads, self.args[0], generator)
        if self.kind == "topk":
            return TopKWithErrorFeedback(self.args[0])(grads)  # a single round: residual is zero
        if self.kind == "quant":
            return quantize(grads, int(self.args[0]))
        if self.kind == "fp16":
            return [g.half().float() for g in grads]
        return grads


def _number(spec: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"Invalid defense {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"Invalid defense {spec!r}: {text!r} is not finite")
    return value


def parse_defense(spec: str) -> Defense:
    """Parse one spec (``none``, ``prune:P``, ``noise:SIGMA[:C]``, ``gauss:STD``, ``topk:K``,
    ``quant:BITS``, ``fp16``, ``batch:B``) with range checks that name the spec."""
    kind, *rest = spec.strip().split(":")
    if kind not in KINDS:
        raise ValueError(
            f"Invalid defense {spec!r}: unknown kind {kind!r} (expected one of {KINDS})"
        )
    args = tuple(_number(spec, t) for t in rest)
    expected = {"none": (0,), "fp16": (0,), "noise": (1, 2)}.get(kind, (1,))
    if len(args) not in expected:
        raise ValueError(
            f"Invalid defense {spec!r}: {kind} takes {' or '.join(map(str, expected))} value(s)"
        )
    checks = {
        "prune": (lambda a: 0 <= a[0] < 1, "P must be in [0, 1)"),
        "noise": (
            lambda a: a[0] >= 0 and (len(a) == 1 or a[1] > 0),
            "SIGMA must be >= 0 and C > 0",
        ),
        "gauss": (lambda a: a[0] >= 0, "STD must be >= 0"),
        "topk": (lambda a: 0 < a[0] <= 1, "K must be in (0, 1]"),
        "quant": (
            lambda a: a[0] == int(a[0]) and 1 <= a[0] <= 16,
            "BITS must be an integer in [1, 16]",
        ),
        "batch": (
            lambda a: a[0] == int(a[0]) and 1 <= a[0] <= 64,
            "B must be an integer in [1, 64]",
        ),
    }
    if kind in checks and not checks[kind][0](args):
        raise ValueError(f"Invalid defense {spec!r}: {checks[kind][1]}")
    if kind == "noise" and len(args) == 1:
        args = (args[0], 1.0)
    return Defense(kind, args, label=spec.strip())


def parse_defenses(text: str) -> list[Defense]:
    specs = [s for s in text.split(",") if s.strip()]
    if not specs:
        raise ValueError(f"Invalid defenses: {text!r} (give at least one, e.g. none,prune:0.9)")
    return [parse_defense(s) for s in specs]


# -- the audit --------------------------------------------------------------------------------
@dataclass
class AuditRow:
    defense: str
    attack: str
    mse: float
    psnr: float
    label_accuracy: float
    seconds: float


@dataclass
class AuditResult:
    rows: list[AuditRow]
    unrelated_psnr: float
    originals: Tensor  # [N, 1, 8, 8], the first image of each audited batch
    reconstructions: dict[tuple[str, str], Tensor]  # (defense, attack) -> [N, 1, 8, 8]


def _batch_for(
    images: Tensor, labels: Tensor, start: int, size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Image ``start`` plus ``size - 1`` random others."""
    others = torch.randperm(images.shape[0], generator=generator)
    others = others[others != start][: size - 1]
    index = torch.cat([torch.tensor([start]), others])
    return images[index], labels[index]


def audit_leakage(
    defenses: list[Defense],
    *,
    attacks: tuple[str, ...] = ("dlg", "idlg", "ig"),
    images: int = 4,
    seed: int = 0,
    iterations: dict[str, int] | None = None,
) -> AuditResult:
    """Attack ``images`` digits (chosen by ``seed``) under each defence with each attack.

    Returns per-(defence, attack) means of MSE, PSNR and label accuracy, the baseline PSNR of an
    unrelated digit, and the reconstructions of every image (for the PNG grid).
    """
    for name in attacks:
        if name not in leakage.ATTACKS:
            raise ValueError(f"Invalid attack: {name!r} (expected one of {leakage.ATTACKS})")
    if isinstance(images, bool) or images < 1:
        raise ValueError(f"Invalid images: {images!r} (must be a positive integer)")
    all_images, all_labels = leakage.load_digit_images()
    pick = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(all_images.shape[0], generator=pick)[:images].tolist()
    model = leakage.make_victim(seed)
    rows, recon = [], {}
    for defense in defenses:
        for name in attacks:
            started = time.perf_counter()
            scores, firsts = [], []
            for k, index in enumerate(chosen):
                gen = torch.Generator().manual_seed(seed * 1000 + k)
                x, y = _batch_for(all_images, all_labels, index, defense.batch_size, gen)
                grads = defense.gradient(model, x, y, gen)
                guess = leakage.attack(
                    name,
                    model,
                    grads,
                    tuple(x.shape),
                    iterations=(iterations or {}).get(name),
                    generator=gen,
                )
                result, matched = leakage.score(x, y, guess)
                scores.append(result)
                firsts.append(matched.images[:1])
            rows.append(
                AuditRow(
                    defense.label,
                    name,
                    mse=sum(s.mse for s in scores) / len(scores),
                    psnr=sum(s.psnr for s in scores) / len(scores),
                    label_accuracy=sum(s.label_accuracy for s in scores) / len(scores),
                    seconds=time.perf_counter() - started,
                )
            )
            recon[(defense.label, name)] = torch.cat(firsts)
    unrelated = leakage.psnr_of_unrelated(
        all_images, all_labels, torch.Generator().manual_seed(seed)
    )
    return AuditResult(rows, unrelated, all_images[chosen], recon)
