r"""Gradient-leakage attacks: how much of a training batch can be rebuilt from its gradient.

Threat model (honest-but-curious server): the attacker knows the model :math:`F(\cdot; W)` and sees
the gradient :math:`\nabla W = \partial \ell(F(x, W), y) / \partial W` of one batch; it searches
for inputs whose gradient matches. Three attacks:

* **DLG** — Zhu, Liu & Han, "Deep Leakage from Gradients", NeurIPS 2019, arXiv:1906.08935;
  official code https://github.com/mit-han-lab/dlg (``main.py``). Dummy input
  :math:`x' \sim \mathcal N(0, I)` and dummy label logits :math:`y'`, minimise

  .. math:: D(x', y') = \sum_{\text{layers}} \lVert \nabla_W \ell(F(x'), \mathrm{softmax}(y'))
     - \nabla W \rVert_2^2

  with L-BFGS (lr 1), differentiating through the gradient. The official code calls
  ``LBFGS.step`` 300 times with torch's default 20 inner iterations and no line search; we run
  ``iterations`` L-BFGS iterations in total with a strong-Wolfe line search, because without it
  L-BFGS often diverges to NaN on this objective (pytorch/pytorch#5953) and the budget must stay
  small for a CPU audit.
* **iDLG** — Zhao, Mopuri & Bilen, "iDLG: Improved Deep Leakage from Gradients",
  arXiv:2001.02610, 2020; official code https://github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients.
  With cross-entropy and non-negative inputs to the last linear layer (our sigmoid features),
  only the true class's row of that layer's weight gradient is negative:
  :math:`\hat y = \arg\min_c \sum_j \partial\ell/\partial W_{c,j}`. Then DLG optimises :math:`x'`
  alone with that label. For a batch of :math:`B > 1` we keep the :math:`B` most negative rows
  (exact when the labels are distinct; an extension, not in the paper).
* **Inverting Gradients** — Geiping, Bauermeister, Dröge & Moeller, "Inverting Gradients — How
  easy is it to break privacy in federated learning?", NeurIPS 2020, arXiv:2003.14053; official
  code https://github.com/JonasGeiping/invertinggradients (``inversefed/reconstruction_algorithms.py``).

  .. math:: \min_{x \in [0,1]^n}\; 1 - \frac{\langle \nabla_W \ell(x, y), \nabla W\rangle}
     {\lVert\nabla_W \ell(x, y)\rVert\,\lVert\nabla W\rVert} + \alpha_{TV}\,\mathrm{TV}(x)

  (cosine over all layers jointly), Adam (lr 0.1) on the *sign* of the gradient, projection onto
  the box after each step, step decay x0.1 at 3/8, 5/8, 7/8 of the iterations, anisotropic TV
  (mean absolute neighbour differences) with weight 1e-4 (the official CLI default; its
  ``DEFAULT_CONFIG`` uses 1e-1, which on 8x8 digits over-smooths: 16 dB instead of 54 dB
  undefended). Labels from iDLG. The paper runs 24,000 iterations on 32x32 images (4,800 by
  default in the code) with restarts; 8x8 digits need 100 and we use one restart.

Victim: :class:`DigitsLeNet`, the DLG LeNet scaled to scikit-learn's 8x8 digits (sigmoid
activations, weights U(-0.5, 0.5) as in DLG's ``weights_init``), untrained — the setting where
gradients leak most (a converged model has near-zero gradients; GradAttack issue #1).

Metrics: MSE, PSNR :math:`= 10\log_{10}(1/\mathrm{MSE})` (pixels in [0, 1]), label accuracy.
Reconstructions of a batch are matched to the originals by minimum total MSE (the attack cannot
know the order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

ATTACKS = ("dlg", "idlg", "ig")
Grads = list[Tensor]


class DigitsLeNet(nn.Module):
    """DLG's victim network for 1x8x8 digits: two 3x3 convolutions with 12 channels and sigmoid
    activations, then a linear layer 768 -> 10 (the same 768 features as DLG's CIFAR LeNet)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 8 * 8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.sigmoid(self.conv2(torch.sigmoid(self.conv1(x))))
        return self.fc(h.flatten(1))


def make_victim(seed: int = 0, num_classes: int = 10) -> DigitsLeNet:
    """A :class:`DigitsLeNet` with DLG's U(-0.5, 0.5) initialisation of weights and biases."""
    generator = torch.Generator().manual_seed(seed)
    model = DigitsLeNet(num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
    return model


def load_digit_images() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as images in [0, 1], shape [1797, 1, 8, 8], and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(data.target, dtype=torch.long)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against a probability vector (DLG's ``cross_entropy_for_onehot``), mean over
    the batch; equals ``F.cross_entropy`` for one-hot targets."""
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def batch_gradient(model: nn.Module, images: Tensor, labels: Tensor) -> Grads:
    """The gradient a client would share: mean cross-entropy over its batch."""
    loss = F.cross_entropy(model(images), labels)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _dummy_gradient(model: nn.Module, x: Tensor, label_probs: Tensor) -> Grads:
    loss = soft_cross_entropy(model(x), label_probs)
    return list(torch.autograd.grad(loss, list(model.parameters()), create_graph=True))


def idlg_labels(model: nn.Module, grads: Grads, batch_size: int = 1) -> Tensor:
    """iDLG's analytic labels from the last linear layer's weight gradient: the ``batch_size``
    classes whose gradient rows have the most negative sums."""
    last = [i for i, p in enumerate(model.parameters()) if p.dim() == 2][-1]
    row_sums = grads[last].sum(dim=1)
    return torch.argsort(row_sums)[:batch_size]


def _squared_distance(dummy: Grads, target: Grads) -> Tensor:
    return sum(((d - t) ** 2).sum() for d, t in zip(dummy, target, strict=True))  # type: ignore[return-value]


def _cosine_distance(dummy: Grads, target: Grads) -> Tensor:
    dot = sum((d * t).sum() for d, t in zip(dummy, target, strict=True))
    dummy_sq = sum(d.pow(2).sum() for d in dummy)
    target_sq = sum(t.pow(2).sum() for t in target)
    return 1 - dot / (dummy_sq.sqrt() * target_sq.sqrt()).clamp_min(1e-12)  # type: ignore[union-attr]


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic TV: mean |horizontal difference| + mean |vertical difference|."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (
        x[..., 1:, :] - x[..., :-1, :]
    ).abs().mean()


@dataclass
class Reconstruction:
    images: Tensor  # [B, 1, 8, 8], the attacker's guess (order arbitrary)
    labels: Tensor  # [B], the attacker's label guesses


def dlg(
    model: nn.Module,
    grads: Grads,
    shape: tuple[int, ...],
    *,
    num_classes: int = 10,
    labels: Tensor | None = None,
    iterations: int = 100,
    generator: torch.Generator | None = None,
) -> Reconstruction:
    """DLG (``labels=None``: soft labels optimised jointly) or iDLG's second stage (labels given)."""
    x = torch.randn(shape, generator=generator).requires_grad_(True)
    label_logits = torch.randn(shape[0], num_classes, generator=generator).requires_grad_(
        labels is None
    )
    variables = [x] + ([label_logits] if labels is None else [])
    fixed = None if labels is None else F.one_hot(labels, num_classes).float()
    optimizer = torch.optim.LBFGS(
        variables,
        lr=1.0,
        max_iter=iterations,
        history_size=100,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        probs = F.softmax(label_logits, dim=-1) if fixed is None else fixed
        loss = _squared_distance(_dummy_gradient(model, x, probs), grads)
        loss.backward()
        return loss

    optimizer.step(closure)
    guessed = label_logits.argmax(-1) if labels is None else labels
    return Reconstruction(x.detach().clamp(0, 1), guessed.detach())


def inverting_gradients(
    model: nn.Module,
    grads: Grads,
    shape: tuple[int, ...],
    labels: Tensor,
    *,
    num_classes: int = 10,
    iterations: int = 100,
    lr: float = 0.1,
    tv_weight: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Reconstruction:
    """Inverting Gradients with known (e.g. iDLG) labels: cosine distance + TV, signed Adam, box."""
    x = torch.randn(shape, generator=generator).clamp(0, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    onehot = F.one_hot(labels, num_classes).float()
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = _cosine_distance(_dummy_gradient(model, x, onehot), grads)
        loss = loss + tv_weight * total_variation(x)
        loss.backward()
        x.grad.sign_()  # type: ignore[union-attr]
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return Reconstruction(x.detach(), labels.detach())


def attack(
    name: str,
    model: nn.Module,
    grads: Grads,
    shape: tuple[int, ...],
    *,
    iterations: int | None = None,
    generator: torch.Generator | None = None,
) -> Reconstruction:
    """Run attack ``name`` (``"dlg"``, ``"idlg"`` or ``"ig"``) with its default budget."""
    if name not in ATTACKS:
        raise ValueError(f"Invalid attack: {name!r} (expected one of {ATTACKS})")
    if name == "dlg":
        return dlg(model, grads, shape, iterations=iterations or 100, generator=generator)
    labels = idlg_labels(model, grads, shape[0])
    if name == "idlg":
        return dlg(
            model, grads, shape, labels=labels, iterations=iterations or 100, generator=generator
        )
    return inverting_gradients(
        model, grads, shape, labels, iterations=iterations or 100, generator=generator
    )


# -- metrics ----------------------------------------------------------------------------------
def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image (all dimensions but the first)."""
    return (a - b).pow(2).flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image for pixels in [0, 1] (capped at 100 dB for exact copies)."""
    return 10 * torch.log10(1 / mse(a, b).clamp_min(1e-10))


def match_to_originals(originals: Tensor, guess: Reconstruction) -> Reconstruction:
    """Reorder a batch reconstruction to the assignment of minimum total MSE (Hungarian)."""
    if originals.shape[0] == 1:
        return guess
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(originals.flatten(1), guess.images.flatten(1)).pow(2)
    _, columns = linear_sum_assignment(cost.numpy())
    order = torch.as_tensor(columns)
    return Reconstruction(guess.images[order], guess.labels[order])


@dataclass
class LeakageScore:
    mse: float
    psnr: float
    label_accuracy: float


def score(
    originals: Tensor, labels: Tensor, guess: Reconstruction
) -> tuple[LeakageScore, Reconstruction]:
    """Match ``guess`` to the originals and measure MSE, PSNR and label accuracy (batch means)."""
    matched = match_to_originals(originals, guess)
    return (
        LeakageScore(
            mse=float(mse(originals, matched.images).mean()),
            psnr=float(psnr(originals, matched.images).mean()),
            label_accuracy=float((matched.labels == labels).float().mean()),
        ),
        matched,
    )


def psnr_of_unrelated(images: Tensor, labels: Tensor, generator: torch.Generator) -> float:
    """Baseline: mean PSNR of each image against a random digit of another class — what an
    attack that learned nothing about the image (but knows it is a digit) scores."""
    values = []
    for i in torch.randperm(images.shape[0], generator=generator)[:200].tolist():
        others = (labels != labels[i]).nonzero().flatten()
        j = others[torch.randint(len(others), (1,), generator=generator)].item()
        values.append(float(psnr(images[i : i + 1], images[j : j + 1])))
    return sum(values) / len(values)
