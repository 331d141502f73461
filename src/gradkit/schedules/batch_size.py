r"""AdAdaGrad / AdAdaGrad-Norm adaptive batch sizes: grow the batch when gradient noise dominates.

Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024,
arXiv:2402.11215. Official code: https://github.com/timlautk/AdAdaGrad (``tests.py``: ``norm_test``,
``inner_product_test``, ``inner_product_orthogonality_test``; ``main.py``: the training loop).
The tests come from adaptive sampling for SGD: Byrd, Chin, Nocedal & Wu, "Sample size selection in
optimization methods for machine learning", Math. Prog. 2012 (norm test) and Bollapragada, Byrd &
Nocedal, "Adaptive sampling strategies for stochastic optimization", SIAM J. Optim. 2018
(augmented inner-product test). AdAdaGrad pairs them with AdaGrad
(:class:`gradkit.optim.Adagrad`), AdAdaGrad-Norm with AdaGrad-Norm; the controller itself works
with any optimizer.

**Norm test.** With per-sample gradients :math:`g_i` of the batch :math:`\mathcal B_k`
(:math:`b_k = |\mathcal B_k|`) and their mean :math:`\bar g`, the batch is large enough when

.. math::
    \frac{1}{b_k}\cdot\frac{1}{b_k - 1}\sum_{i\in\mathcal B_k}\|g_i - \bar g\|^2
    \;\le\; \eta^2\,\|\bar g\|^2 ,

i.e. the estimated variance of :math:`\bar g` is small against its squared norm. Otherwise the next
batch is :math:`b_{k+1} = \bigl\lceil \frac{1}{b_k-1}\sum_i\|g_i-\bar g\|^2 /
(\eta^2\|\bar g\|^2) \bigr\rceil` (never smaller than :math:`b_k`). The numerator is the sum of the
coordinate-wise unbiased variances, :math:`\|\widehat{\operatorname{Var}}(g)\|_1`.

**Augmented inner-product test** (``test="inner_product"``): with
:math:`v_i = \langle g_i, \bar g\rangle`, both

.. math::
    \frac{\widehat{\operatorname{Var}}(v)}{b_k} \le \theta^2\|\bar g\|^4,\qquad
    \frac{1}{b_k}\sum_j \widehat{\operatorname{Var}}\Bigl(g_i - \tfrac{v_i}{\|\bar g\|^2}\bar g
    \Bigr)_j \le \nu^2\|\bar g\|^2 ,

and otherwise :math:`b_{k+1} = \lceil\max(\widehat{\operatorname{Var}}(v)/(\theta^2\|\bar g\|^4),
\,\cdot/(\nu^2\|\bar g\|^2))\rceil`. The orthogonal variance equals
:math:`\|\widehat{\operatorname{Var}}(g)\|_1 - \widehat{\operatorname{Var}}(v)/\|\bar g\|^2`
exactly, which is how we compute it (no per-sample projection is materialized).

Official code and our choices:

* Inputs: per-sample gradients (leading dimension = samples), or ``micro_batch_size=m`` means of
  ``m`` samples each (gradient accumulation steps, data-parallel workers): the per-sample variance
  is then estimated without bias by ``m`` times the variance of the micro-batch means. The official
  code instead keeps per-sample variances inside each worker/micro-batch and merges them with the
  law of total variance (its between-group term is the biased one).
* Decoupling: the variance may be estimated from fewer samples than the batch (the official
  ``max_test_micro_batch_size``); the test is made against the controller's current batch size.
* The inner-product test uses the global inner product :math:`\langle g_i, \bar g\rangle` over all
  parameters, as in the paper; the official code sums per-parameter-tensor variances.
* The batch size never shrinks and is capped at ``max_batch_size`` (official ``--max_batch_size``).
  Defaults ``eta = theta = nu = 0.1`` are the official code's.
* Not implemented: the paper's coordinate-wise variant of the test (for AdAdaGrad's theory); the
  official experiments use the norm test with both AdaGrad and AdaGrad-Norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradkit.schedules._checks import check_int, check_positive

TESTS = ("norm", "inner_product")

Grads = Tensor | Mapping[str, Tensor] | Iterable[Tensor]


@dataclass(frozen=True)
class BatchTestResult:
    """Outcome of one test: ``passed`` iff ``required_batch_size <= batch_size``.

    ``variance`` is :math:`\\|\\widehat{\\operatorname{Var}}(g)\\|_1` per sample;
    ``inner_product_variance`` is set by the inner-product test only.
    """

    test: str
    batch_size: int
    samples: int
    grad_norm_sq: float
    variance: float
    required_batch_size: float
    passed: bool
    inner_product_variance: float | None = None

    @property
    def next_batch_size(self) -> int | float:
        """``batch_size`` if passed, else ``ceil(required_batch_size)`` (``inf`` if unbounded)."""
        if self.passed:
            return self.batch_size
        if math.isinf(self.required_batch_size):
            return math.inf
        return max(self.batch_size, math.ceil(self.required_batch_size))


def _as_list(grads: Grads) -> list[Tensor]:
    if isinstance(grads, Tensor):
        tensors = [grads]
    elif isinstance(grads, Mapping):
        tensors = list(grads.values())
    else:
        tensors = list(grads)
    if not tensors:
        raise ValueError("Invalid grads: empty (expected per-sample gradient tensors)")
    rows = {t.shape[0] if t.dim() > 0 else None for t in tensors}
    if len(rows) != 1 or None in rows:
        raise ValueError(
            f"Invalid grads: leading dimensions {sorted(map(str, rows))} (every tensor needs the "
            "same leading sample / micro-batch dimension)"
        )
    if tensors[0].shape[0] < 2:
        raise ValueError(f"Invalid grads: {tensors[0].shape[0]} samples (need at least 2)")
    return tensors


def _rows(t: Tensor) -> Tensor:
    t = t.detach().reshape(t.shape[0], -1)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _f64(t: Tensor) -> float:
    return float(t.to(device="cpu", dtype=torch.float64))


def gradient_statistics(grads: Grads, micro_batch_size: int = 1, inner_product: bool = False):
    r"""``(grad_norm_sq, variance, inner_product_variance, samples)`` of per-sample ``grads``.

    ``variance`` is the per-sample :math:`\|\widehat{\operatorname{Var}}(g)\|_1` (unbiased;
    ``micro_batch_size`` times that of micro-batch means); ``inner_product_variance`` the per-sample
    unbiased variance of :math:`\langle g_i, \bar g\rangle` (``None`` unless ``inner_product``).
    """
    check_int("micro_batch_size", micro_batch_size, minimum=1)
    rows = [_rows(t) for t in _as_list(grads)]
    means = [r.mean(dim=0) for r in rows]
    grad_norm_sq = sum(_f64(m.double().square().sum()) for m in means)
    variance = sum(_f64(r.var(dim=0, correction=1).double().sum()) for r in rows)
    ip_variance = None
    if inner_product:
        products = sum((r @ m).double().cpu() for r, m in zip(rows, means, strict=True))
        ip_variance = _f64(products.var(correction=1)) * micro_batch_size
    return (
        grad_norm_sq,
        variance * micro_batch_size,
        ip_variance,
        rows[0].shape[0] * micro_batch_size,
    )


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    return 0.0 if numerator <= 0 else math.inf


def norm_test(
    grads: Grads, eta: float = 0.1, batch_size: int | None = None, micro_batch_size: int = 1
) -> BatchTestResult:
    r"""The norm test: :math:`\|\widehat{\operatorname{Var}}(g)\|_1 / b \le \eta^2\|\bar g\|^2`.

    ``grads``: per-sample gradients with the sample on dimension 0 (a tensor, a list of tensors, or
    a dict such as ``torch.func.vmap(torch.func.grad(loss))`` returns), or micro-batch means with
    ``micro_batch_size``. ``batch_size`` (default: the number of samples in ``grads``) is the batch
    the test is made for.

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0), variance 2 + 0
        >>> r = norm_test(g, eta=0.5)
        >>> r.required_batch_size, r.passed, r.next_batch_size
        (2.0, True, 2)
    """
    check_positive("eta", eta)
    grad_norm_sq, variance, _, samples = gradient_statistics(grads, micro_batch_size)
    b = samples if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    required = _ratio(variance, eta**2 * grad_norm_sq)
    return BatchTestResult(
        "norm", b, samples, grad_norm_sq, variance, required, variance <= eta**2 * grad_norm_sq * b
    )


def inner_product_test(
    grads: Grads,
    theta: float = 0.1,
    nu: float = 0.1,
    batch_size: int | None = None,
    micro_batch_size: int = 1,
) -> BatchTestResult:
    r"""The augmented inner-product test (Bollapragada et al. 2018), arguments as :func:`norm_test`.

    Example:
        >>> g = torch.tensor([[1.0, 1.0], [3.0, -1.0]])  # mean (2, 0): v = (2, 6), Var(v) = 8
        >>> r = inner_product_test(g, theta=1.0, nu=1.0)
        >>> r.inner_product_variance, r.variance - r.inner_product_variance / r.grad_norm_sq
        (8.0, 2.0)
        >>> r.required_batch_size, r.passed
        (0.5, True)
    """
    check_positive("theta", theta)
    check_positive("nu", nu)
    grad_norm_sq, variance, ip_var, samples = gradient_statistics(grads, micro_batch_size, True)
    b = samples if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    orth_var = max(variance - _ratio(ip_var, grad_norm_sq), 0.0)
    required = max(
        _ratio(ip_var, theta**2 * grad_norm_sq**2), _ratio(orth_var, nu**2 * grad_norm_sq)
    )
    passed = ip_var <= theta**2 * grad_norm_sq**2 * b and orth_var <= nu**2 * grad_norm_sq * b
    return BatchTestResult(
        "inner_product", b, samples, grad_norm_sq, variance, required, passed, ip_var
    )


class AdaptiveBatchSize:
    r"""AdAdaGrad / AdAdaGrad-Norm batch-size controller (Lau, Liu & Kolar 2024).

    Call :meth:`observe` with the per-sample (or micro-batch) gradients of a step; it runs the
    test (``"norm"`` with ``eta``, or ``"inner_product"`` with ``theta`` and ``nu``) against the
    current batch size and returns the batch size to use next: unchanged when the test passes,
    otherwise the test's required size, capped at ``max_batch_size``. The batch never shrinks.
    The math and the choices against the official code are in the module docstring.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> controller = AdaptiveBatchSize(batch_size=4, eta=0.5, max_batch_size=64)
        >>> signal = torch.ones(4, 10) + 0.01 * torch.randn(4, 10)   # mean dominates: keep 4
        >>> controller.observe(signal)
        4
        >>> noise = torch.randn(4, 10) + 0.01                         # noise dominates: grow
        >>> controller.observe(noise) > 4
        True
    """

    def __init__(
        self,
        batch_size: int,
        *,
        test: str = "norm",
        eta: float = 0.1,
        theta: float = 0.1,
        nu: float = 0.1,
        max_batch_size: int | None = None,
    ) -> None:
        check_int("batch_size", batch_size, minimum=1)
        if test not in TESTS:
            raise ValueError(
                f"Invalid test: {test!r} (choose one of {', '.join(map(repr, TESTS))})"
            )
        check_positive("eta", eta)
        check_positive("theta", theta)
        check_positive("nu", nu)
        if max_batch_size is not None and check_int("max_batch_size", max_batch_size) < batch_size:
            raise ValueError(
                f"Invalid max_batch_size: {max_batch_size!r} (must be >= batch_size={batch_size})"
            )
        self.batch_size = batch_size
        self.test = test
        self.eta, self.theta, self.nu = eta, theta, nu
        self.max_batch_size = max_batch_size
        self.num_observed = 0
        self.num_increases = 0
        self.last: BatchTestResult | None = None

    def __repr__(self) -> str:
        params = f"eta={self.eta}" if self.test == "norm" else f"theta={self.theta}, nu={self.nu}"
        return (
            f"AdaptiveBatchSize(batch_size={self.batch_size}, test={self.test!r}, {params}, "
            f"max_batch_size={self.max_batch_size})"
        )

    def run_test(self, grads: Grads, micro_batch_size: int = 1) -> BatchTestResult:
        """The configured test against the current batch size (changes nothing)."""
        if self.test == "norm":
            return norm_test(grads, self.eta, self.batch_size, micro_batch_size)
        return inner_product_test(grads, self.theta, self.nu, self.batch_size, micro_batch_size)

    def observe(self, grads: Grads, micro_batch_size: int = 1) -> int:
        """Test this step's gradients; return (and adopt) the next batch size."""
        result = self.run_test(grads, micro_batch_size)
        self.last = result
        self.num_observed += 1
        if result.passed:
            return self.batch_size
        cap = math.inf if self.max_batch_size is None else self.max_batch_size
        if math.isinf(result.required_batch_size):
            new = self.batch_size if math.isinf(cap) else int(cap)
        else:
            new = int(min(max(self.batch_size, math.ceil(result.required_batch_size)), cap))
        if new > self.batch_size:
            self.num_increases += 1
            self.batch_size = new
        return self.batch_size

    def state_dict(self) -> dict[str, Any]:
        """Counters and the current batch size (plain numbers); the test settings are config."""
        return {
            "batch_size": self.batch_size,
            "num_observed": self.num_observed,
            "num_increases": self.num_increases,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.batch_size = check_int("batch_size", state_dict["batch_size"], minimum=1)
        self.num_observed = int(state_dict["num_observed"])
        self.num_increases = int(state_dict["num_increases"])
