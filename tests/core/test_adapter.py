"""The torch.optim adapter behaves like a torch optimizer."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import gradkit
from gradkit.core import ChainOptimizer, NonFiniteGradientError
from gradkit.optim import SGD, Adam, AdamW


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(
        dtype
    )


def _data(dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g).to(dtype), torch.randn(32, 2, generator=g).to(dtype)


def _train(model, opt, steps=20, scheduler=None, dtype=torch.float32):
    x, y = _data(dtype)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return loss.item()


def test_is_a_torch_optimizer_and_repr_shows_the_chain():
    opt = AdamW(_mlp().parameters())
    assert isinstance(opt, torch.optim.Optimizer)
    assert "adam(" in repr(opt) and "lr(" in repr(opt)


def test_param_groups_equal_separate_optimizers():
    """Two groups with different hyperparameters == two optimizers, one per group."""
    a, b = _mlp(), _mlp()
    opt = Adam(
        [
            {"params": a[0].parameters(), "lr": 0.05, "betas": (0.8, 0.99)},
            {"params": a[2].parameters(), "weight_decay": 0.1},
        ],
        lr=0.01,
    )
    opt_1 = Adam(b[0].parameters(), lr=0.05, betas=(0.8, 0.99))
    opt_2 = Adam(b[2].parameters(), lr=0.01, weight_decay=0.1)
    x, y = _data()
    for _ in range(10):
        for o in (opt, opt_1, opt_2):
            o.zero_grad()
        ((a(x) - y) ** 2).mean().backward()
        ((b(x) - y) ** 2).mean().backward()
        opt.step()
        opt_1.step()
        opt_2.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=20),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
    ],
)
def test_lr_schedulers_drive_gradkit_like_torch(make_scheduler):
    ours, theirs = _mlp(), _mlp()
    o1 = gradkit.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    o2 = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    _train(ours, o1, scheduler=make_scheduler(o1))
    _train(theirs, o2, scheduler=make_scheduler(o2))
    assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"]
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_closure_is_called_and_its_loss_returned():
    model = _mlp()
    opt = Adam(model.parameters())
    x, y = _data()
    calls = []

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        calls.append(loss.item())
        return loss

    loss = opt.step(closure)
    assert calls and loss.item() == calls[0]


def test_step_hooks_fire_in_order():
    opt = Adam(_mlp().parameters())
    events = []
    opt.register_step_pre_hook(lambda o, a, k: events.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: events.append("post"))
    _train(_mlp(), opt, steps=1)
    assert events == ["pre", "post"]


def test_parameters_without_grad_are_skipped():
    model = _mlp()
    opt = Adam(model.parameters(), lr=0.1)
    frozen = copy.deepcopy(model[0].weight.detach())
    x, y = _data()
    ((model[2](torch.tanh(x @ frozen.T)) - y) ** 2).mean().backward()  # only layer 2 gets grads
    opt.step()
    assert torch.equal(model[0].weight, frozen)
    assert not opt.state[model[0].weight]
    assert opt.state[model[2].weight]["step"].item() == 1


def test_zero_grad_sets_none_and_no_step_then():
    model = _mlp()
    opt = SGD(model.parameters(), lr=0.1)
    _train(model, opt, steps=1)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def test_sparse_gradients_raise_a_clear_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_unknown_hyperparameter_is_a_type_error():
    with pytest.raises(TypeError, match="weight_decy"):
        ChainOptimizer(_mlp().parameters(), gradkit.scale_by_lr(), lr=0.1, weight_decy=0.1)


def test_invalid_hyperparameter_in_added_group_is_rejected_and_not_kept():
    model = _mlp()
    opt = Adam(model[0].parameters())
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": model[2].parameters(), "lr": -1.0})
    assert len(opt.param_groups) == 1


def test_torch_only_flags_are_accepted_but_rejected_when_set():
    Adam(_mlp().parameters(), foreach=True)  # accepted: always multi-tensor
    with pytest.raises(ValueError, match="capturable"):
        Adam(_mlp().parameters(), capturable=True)
    with pytest.raises(ValueError, match="differentiable"):
        SGD(_mlp().parameters(), differentiable=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_dtypes_train(dtype):
    model = _mlp(dtype=dtype)
    opt = AdamW(model.parameters(), lr=1e-2)
    first = _train(model, opt, steps=1, dtype=dtype)
    last = _train(model, opt, steps=50, dtype=dtype)
    assert last < first
    assert all(s["adam.exp_avg"].dtype == dtype for s in opt.state.values())


def test_bf16_parameters_keep_fp32_state_and_track_fp32_training():
    ref, low = _mlp(), _mlp(dtype=torch.bfloat16)
    o_ref = AdamW(ref.parameters(), lr=1e-2)
    o_low = AdamW(low.parameters(), lr=1e-2)
    _train(ref, o_ref, steps=30)
    _train(low, o_low, steps=30, dtype=torch.bfloat16)
    for p in low.parameters():
        assert p.dtype == torch.bfloat16
        assert o_low.state[p]["adam.exp_avg"].dtype == torch.float32
    for p, q in zip(ref.parameters(), low.parameters(), strict=True):
        torch.testing.assert_close(p, q.float(), rtol=0.1, atol=0.05)


def test_bf16_resume_keeps_fp32_state_bit_exact():
    """torch.optim would cast loaded state to the parameter dtype; gradkit keeps the saved one."""
    model = _mlp(dtype=torch.bfloat16)
    opt = Adam(model.parameters(), lr=1e-2)
    _train(model, opt, steps=3, dtype=torch.bfloat16)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = Adam(model.parameters(), lr=1e-2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for p in model.parameters():
        for key in ("adam.exp_avg", "adam.exp_avg_sq"):
            assert fresh.state[p][key].dtype == torch.float32
            assert torch.equal(fresh.state[p][key], opt.state[p][key])


def test_nonfinite_skip_is_per_group():
    model = _mlp()
    opt = SGD(
        [{"params": model[0].parameters()}, {"params": model[2].parameters()}],
        lr=0.1,
    )
    _train(model, opt, steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[0].bias.grad[0] = float("nan")
    with pytest.warns(RuntimeWarning, match="group 0"):
        opt.step()
    after = list(model.parameters())
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert not torch.equal(after[2], before[2])  # the healthy group still stepped
    assert [g["nonfinite_skips"] for g in opt.param_groups] == [1, 0]


def test_nonfinite_apply_does_not_check():
    p = torch.zeros(3, requires_grad=True)
    opt = SGD([p], lr=0.1, nonfinite="apply")
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    opt.step()
    assert torch.isnan(p[1])


def test_nonfinite_raise_without_names_points_at_the_index():
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = SGD([p, q], lr=0.1, nonfinite="raise")
    p.grad = torch.zeros(2)
    q.grad = torch.tensor([0.0, float("-inf"), 0.0])
    with pytest.raises(NonFiniteGradientError, match=r"\['params'\]\[1\] \(shape \(3,\)\)"):
        opt.step()


def test_load_state_dict_rejects_a_mismatched_checkpoint():
    opt = Adam(_mlp().parameters())
    other = Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError):
        opt.load_state_dict(other.state_dict())


def test_empty_param_group_is_allowed_and_noop():
    p = torch.ones(2, requires_grad=True)
    opt = Adam([{"params": []}, {"params": [p]}], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    assert torch.all(p < 1)


def test_state_keys_are_namespaced():
    model = _mlp()
    opt = gradkit.optim.RMSprop(model.parameters(), momentum=0.9, centered=True)
    _train(model, opt, steps=1)
    keys = set(opt.state[model[0].weight])
    assert keys == {"step", "rms.square_avg", "rms.grad_avg", "trace.momentum_buffer"}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("AdamW", dict(lr=0.01, weight_decay=0.1)),
        ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
        ("Adam", dict(lr=0.01, weight_decay=0.1)),
        ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
        ("NAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ],
)
def test_fused_apply_equals_readable_path_with_state(name, kwargs):
    """The in-place lr/decay apply (fast path) equals running every transform (readable path)."""
    results = []
    for fuse in (True, False):
        model = _mlp(dtype=torch.float64)
        opt = getattr(gradkit.optim, name)(model.parameters(), **kwargs)
        opt.fuse_apply = fuse
        _train(model, opt, steps=10, dtype=torch.float64)
        results.append((list(model.parameters()), opt.state_dict()["state"]))
    (p_fast, s_fast), (p_slow, s_slow) = results
    for a, b in zip(p_fast, p_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    for idx in s_fast:
        for key in s_fast[idx]:
            torch.testing.assert_close(s_fast[idx][key], s_slow[idx][key], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("AdamW", dict(lr=0.01, weight_decay=0.1)),
        ("AdamW", dict(lr=0.01, amsgrad=True, maximize=True)),
        ("Adam", dict(lr=0.01, weight_decay=0.1)),
        ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True)),
    ],
)
def test_fused_adam_equals_readable_path_and_shares_checkpoints(name, kwargs):
    """fused=True (torch's kernel) == the chain, float64, params and state; checkpoints cross."""
    runs = []
    for fused in (True, False):
        model = _mlp(dtype=torch.float64)
        opt = getattr(gradkit.optim, name)(model.parameters(), fused=fused, **kwargs)
        _train(model, opt, steps=8, dtype=torch.float64)
        runs.append((model, opt))
    (m_fast, o_fast), (m_slow, o_slow) = runs
    for p, q in zip(m_fast.parameters(), m_slow.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
        assert set(o_fast.state[p]) == set(o_slow.state[q])
        for key in o_fast.state[p]:
            torch.testing.assert_close(
                o_fast.state[p][key], o_slow.state[q][key], rtol=1e-12, atol=1e-14
            )
    # a checkpoint written by the fused path continues on the readable path
    o_slow.load_state_dict(o_fast.state_dict())
    for p in m_slow.parameters():
        assert o_slow.state[p]["step"].item() == 8


def test_fused_with_transforms_is_rejected():
    with pytest.raises(ValueError, match="fused"):
        AdamW(_mlp().parameters(), fused=True, transforms=[gradkit.scale(0.5)])


@pytest.mark.parametrize("policy", ["skip", "raise", "apply"])
def test_zero_element_parameters_are_fine_under_every_policy(policy):
    empty = torch.zeros(0, 3, requires_grad=True)
    p = torch.ones(2, requires_grad=True)
    opt = AdamW([empty, p], lr=0.1, nonfinite=policy)
    empty.grad = torch.zeros(0, 3)
    p.grad = torch.ones(2)
    opt.step()
    assert torch.all(p < 1) and empty.shape == (0, 3)


def test_huge_finite_gradients_are_not_mistaken_for_nonfinite():
    """The fast check's squared norm overflows for |g| ~ 1e20 in fp32; the exact re-check keeps
    such a (finite) step."""
    p = torch.zeros(4, requires_grad=True)
    opt = SGD([p], lr=1e-20, nonfinite="raise")
    p.grad = torch.full((4,), 1e20)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4,), -1.0))


def test_transforms_see_parameter_names():
    seen = []

    class Record(gradkit.GroupTransform):
        name = "record"

        def update(self, updates, state, params, ctx):
            seen.append([ctx.name(i) for i in range(len(updates))])
            return updates

    model = _mlp()
    opt = ChainOptimizer(
        model.named_parameters(), gradkit.chain(Record(), gradkit.scale_by_lr()), lr=0.1
    )
    _train(model, opt, steps=1)
    assert seen == [["0.weight", "0.bias", "2.weight", "2.bias"]]
