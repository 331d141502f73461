"""The optimizer contract for the low-rank methods (GaLore, QGaLore, Fira, FRUGAL).

tests/optim/test_contract.py's harness assumes full-size state (its registry test allocates at
the defaults on a 64 x 32 matrix and compares with ``state_floats``, which for projected state is
a per-parameter figure for a typical shape), so these methods run the same checks here: float64
reference over several steps with state (moments *and* basis), bit-exact ``state_dict`` resume
across basis refreshes with ``weights_only`` loading, bad arguments, non-finite skip, gradients
left alone, unprojected parameters get AdamW, per-group hyperparameters.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from gradkit.memory.fira import Fira
from gradkit.memory.frugal import FRUGAL
from gradkit.memory.galore import GaLore, QGaLore
from gradkit.optim import AdamW
from reference import lowrank as ref
from support.harness import BAD_BETAS_EPS, BAD_COMMON, checkpoint_roundtrip

SHAPES = [(5, 4), (3, 6), (7,)]  # right-projected, left-projected, never projected


def make_params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in SHAPES]


def grad_sequence(n: int, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(n)]


def run(opt, params, grads) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


@dataclass
class Case:
    cls: type
    kwargs: dict[str, Any]
    reference: Any = None
    # our state key -> reference state key (projected matrices only)
    state_map: dict[str, str] = field(default_factory=dict)
    bad_args: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.cls.__name__}({','.join(f'{k}={v}' for k, v in self.kwargs.items())})"

    def make(self, params, **overrides):
        return self.cls(params, **{**self.kwargs, **overrides})


BAD_PROJECTED = [
    ({"rank": 0}, "rank"),
    ({"rank": 2.5}, "rank"),
    ({"update_proj_gap": 0}, "update_proj_gap"),
    ({"scale": -1.0}, "scale"),
    ({"proj_type": "full"}, "proj_type"),
    ({"reproject_moments": 1}, "reproject_moments"),
]
BAD_GALORE = [*BAD_COMMON, *BAD_BETAS_EPS, *BAD_PROJECTED]
BAD_QGALORE = [
    *(bad for bad in BAD_GALORE if "proj_type" not in bad[0]),
    ({"proj_group_size": 0}, "proj_group_size"),
    ({"cos_threshold": 1.5}, "cos_threshold"),
    ({"gamma_proj": 0.5}, "gamma_proj"),
    ({"queue_size": 0}, "queue_size"),
]
BAD_FIRA = [*BAD_GALORE, ({"gamma": 0.9}, "gamma"), ({"residual": "alpha"}, "residual")]
BAD_FRUGAL = [
    *BAD_COMMON,
    *BAD_BETAS_EPS,
    ({"density": 1.5}, "density"),
    ({"density": -0.1}, "density"),
    ({"update_gap": 0}, "update_gap"),
    ({"proj_type": "coord"}, "proj_type"),
    ({"block_order": "mirror"}, "block_order"),
    ({"reset_statistics": "yes"}, "reset_statistics"),
    ({"inactive_lr_scale": -1.0}, "inactive_lr_scale"),
    ({"inactive_update_rule": "adam"}, "inactive_update_rule"),
    ({"seed": -1}, "seed"),
]
GALORE_STATE = {"galore.exp_avg": "m", "galore.exp_avg_sq": "v", "galore.proj": "B"}
FIRA_STATE = {"fira.exp_avg": "m", "fira.exp_avg_sq": "v", "fira.proj": "B", "fira.residual_norm": "s_norm"}  # fmt: skip
QGALORE_STATE = {"qgalore.exp_avg": "m", "qgalore.exp_avg_sq": "v", "qgalore.gap": "gap"}
FRUGAL_STATE = {"frugal.exp_avg": "m", "frugal.exp_avg_sq": "v", "frugal.proj": "B"}

CASES = [
    Case(GaLore, dict(lr=0.01, rank=2, update_proj_gap=2), ref.galore, GALORE_STATE, BAD_GALORE),
    Case(GaLore, dict(lr=0.02, rank=3, update_proj_gap=3, scale=1.0, weight_decay=0.1,
                      reproject_moments=False, maximize=True), ref.galore, GALORE_STATE),
    Case(GaLore, dict(lr=0.01, rank=8, update_proj_gap=1, betas=(0.8, 0.9), eps=1e-3),
         ref.galore, GALORE_STATE),
    # gap 2 -> 4 at the third refresh (step 5): the queue of 2 similarities is full, mean >= 0
    Case(QGaLore, dict(lr=0.01, rank=2, update_proj_gap=2, proj_group_size=4, queue_size=2,
                       cos_threshold=0.0), ref.qgalore, QGALORE_STATE, BAD_QGALORE),
    Case(QGaLore, dict(lr=0.01, rank=3, update_proj_gap=1, proj_group_size=5, queue_size=3,
                       cos_threshold=0.5, gamma_proj=3, weight_decay=0.1,
                       reproject_moments=False), ref.qgalore, QGALORE_STATE),
    Case(Fira, dict(lr=0.01, rank=2, update_proj_gap=2), ref.fira, FIRA_STATE, BAD_FIRA),
    Case(Fira, dict(lr=0.01, rank=3, update_proj_gap=3, residual="official", scale=0.5,
                    weight_decay=0.05, gamma=1.2), ref.fira, FIRA_STATE),
    Case(FRUGAL, dict(lr=0.01, proj_type="svd", density=0.5, update_gap=2), ref.frugal_svd,
         FRUGAL_STATE, BAD_FRUGAL),
    Case(FRUGAL, dict(lr=0.01, proj_type="svd", density=0.7, update_gap=3, weight_decay=0.1,
                      reset_statistics=False, inactive_lr_scale=0.1), ref.frugal_svd,
         FRUGAL_STATE),
    Case(FRUGAL, dict(lr=0.01, proj_type="random", density=0.5, update_gap=2)),
    Case(FRUGAL, dict(lr=0.01, density=0.5, update_gap=2, block_order="random")),
]  # fmt: skip
by_case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
# random subspaces and FRUGAL's block choice have no float64 reference: the method tests check them
REF_CASES = [c for c in CASES if c.reference is not None]
BAD_CASES = [c for c in CASES if c.bad_args]


@pytest.mark.parametrize("case", REF_CASES, ids=[c.id for c in REF_CASES])
def test_matches_float64_reference_with_state(case: Case) -> None:
    params = make_params()
    ref_params = [p.detach().clone() for p in params]
    ref_states: list[dict] = [{} for _ in params]
    opt = case.make(params)
    hp = dict(opt.param_groups[0])
    for t, grads in enumerate(grad_sequence(7), start=1):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for rp, g, st in zip(ref_params, grads, ref_states, strict=True):
            case.reference(rp, g, st, t, hp)
        for p, rp, st in zip(params, ref_params, ref_states, strict=True):
            torch.testing.assert_close(p.detach(), rp, rtol=1e-10, atol=1e-10)
            if p.dim() != 2:
                continue
            for ours, theirs in case.state_map.items():
                torch.testing.assert_close(
                    opt.state[p][ours].to(torch.float64),
                    torch.as_tensor(st[theirs], dtype=torch.float64),
                    rtol=1e-10, atol=1e-10, msg=lambda m, k=ours, t=t: f"{k} at step {t}: {m}",
                )  # fmt: skip


@by_case
@pytest.mark.parametrize("split", [3, 4])
def test_state_dict_resume_is_bit_exact_across_refreshes(case: Case, split: int) -> None:
    grads = grad_sequence(9)
    params = make_params()
    run(case.make(params), params, grads)

    first = make_params()
    opt = case.make(first)
    run(opt, first, grads[:split])
    saved = checkpoint_roundtrip(opt.state_dict())  # torch.load(weights_only=True)
    resumed = [p.detach().clone().requires_grad_() for p in first]
    fresh = case.make(resumed)
    fresh.load_state_dict(saved)
    run(fresh, resumed, grads[split:])
    for p, q in zip(params, resumed, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.id for c in BAD_CASES])
def test_bad_arguments_raise_naming_the_argument(case: Case) -> None:
    for kwargs, needle in case.bad_args:
        with pytest.raises(ValueError, match=needle):
            case.make(make_params(), **kwargs)
        with pytest.raises(ValueError, match=needle):
            case.make([{"params": make_params()[:1], **kwargs}])


@by_case
def test_nonfinite_gradient_skips_without_touching_state(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    run(opt, params, grad_sequence(3))
    before = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict()["state"])
    grads = grad_sequence(1, seed=5)[0]
    grads[0][1, 2] = float("nan")
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before, strict=True))
    after = opt.state_dict()["state"]
    for idx, entry in before_state.items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(after[idx][key]), torch.as_tensor(value)), key
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(opt, params, grad_sequence(1, seed=9))
    assert not torch.equal(params[0], before[0])


@by_case
def test_gradients_are_not_modified(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    for step_grads in grad_sequence(3):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(params, step_grads, strict=True))


@by_case
def test_unprojected_parameters_get_adamw(case: Case) -> None:
    off = {"density": None} if case.cls is FRUGAL else {"rank": None}
    params, adam_params = make_params(), make_params()
    opt = case.make(params, **off)
    hp = opt.param_groups[0]
    adamw = AdamW(adam_params, lr=hp["lr"], betas=hp["betas"], eps=hp["eps"],
                  weight_decay=hp["weight_decay"], maximize=hp["maximize"])  # fmt: skip
    grads = grad_sequence(5)
    run(opt, params, grads)
    run(adamw, adam_params, grads)
    for p, q in zip(params, adam_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-13)


@by_case
def test_per_group_hyperparameters(case: Case) -> None:
    """Two groups with their own lr and projection settings behave as two optimizers."""
    knob = {"density": 0.5} if case.cls is FRUGAL else {"rank": 1, "scale": 0.5}
    together = make_params()
    opt = case.make([{"params": together[:1]}, {"params": together[1:], "lr": 0.003, **knob}])
    apart = make_params()
    opts = [case.make(apart[:1]), case.make(apart[1:], lr=0.003, **knob)]
    grads = grad_sequence(5)
    run(opt, together, grads)
    for step_grads in grads:
        for p, g in zip(apart, step_grads, strict=True):
            p.grad = g.clone()
        for o in opts:
            o.step()
    for p, q in zip(together, apart, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-13)
