"""Drop-Muon: full updates equal Muon, seeded reproducible draws, bit-exact resume, frozen
layers keep weights and momentum, and the float64 reference on the drawn layers."""

from __future__ import annotations

import pytest
import torch

from gradkit.optim.dropmuon import DropMuon, sample_active_layers
from gradkit.optim.muon import Muon
from reference import muon as ref
from support.harness import checkpoint_roundtrip

SHAPES = [(6, 4), (5,), (4, 2, 3), (3, 6), (3,)]
STEPS = 8


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in SHAPES]


def _grads(steps: int = STEPS, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(steps)
    ]


def _run(opt, params, grads, record=None):
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        if record is not None:
            record.append(list(opt.last_active))


@pytest.mark.parametrize(
    "kwargs",
    [dict(sampling="independent", update_prob=1.0), dict(start_probs=(1.0, 0, 0, 0, 0))],
)
def test_full_updates_equal_muon_exactly(kwargs: dict) -> None:
    common = dict(lr=0.02, weight_decay=0.1, ns_dtype=None)
    ours, theirs = _params(), _params()
    drop, muon = DropMuon(ours, **common, **kwargs), Muon(theirs, **common)
    grads = _grads()
    _run(drop, ours, grads)
    _run(muon, theirs, grads)
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
        for key, value in muon.state[q].items():
            assert torch.equal(drop.state[p][key], value), key


def test_the_seed_fixes_the_layer_subsets() -> None:
    draws = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        params, record = _params(), []
        _run(DropMuon(params, lr=0.02, seed=seed), params, _grads(), record)
        draws[name] = (record, [p.detach().clone() for p in params])
    assert draws["a"][0] == draws["b"][0]
    assert all(torch.equal(p, q) for p, q in zip(draws["a"][1], draws["b"][1], strict=True))
    assert draws["a"][0] != draws["c"][0]
    # progressive sampling: every draw is a suffix of the layers and contains the last layer
    for active in draws["a"][0] + draws["c"][0]:
        start = active.index(True)
        assert all(active[start:]) and not any(active[:start])
    assert len({r.index(True) for r in draws["a"][0]}) > 1  # it really drops layers


@pytest.mark.parametrize("sampling", ["progressive", "independent"])
def test_resume_mid_run_is_bit_exact(sampling: str) -> None:
    grads = _grads(10)
    straight, straight_draws = _params(), []
    _run(DropMuon(straight, lr=0.02, sampling=sampling, seed=5), straight, grads, straight_draws)

    first = _params()
    opt = DropMuon(first, lr=0.02, sampling=sampling, seed=5)
    _run(opt, first, grads[:4])
    saved = checkpoint_roundtrip(opt.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in first]
    fresh, resumed_draws = DropMuon(resumed, lr=0.02, sampling=sampling, seed=123), []
    fresh.load_state_dict(saved)
    _run(fresh, resumed, grads[4:], resumed_draws)
    assert resumed_draws == straight_draws[4:]
    assert all(torch.equal(p, q) for p, q in zip(straight, resumed, strict=True))


def test_frozen_layers_keep_weights_momentum_and_step_count() -> None:
    params = _params()
    opt = DropMuon(params, lr=0.02, sampling="independent", update_prob=0.5, seed=2)
    seen_frozen = 0
    for step_grads in _grads(6):
        before = {id(p): ({k: v.clone() for k, v in opt.state[p].items()}, p.detach().clone())
                  for p in params}  # fmt: skip
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, active in zip(params, opt.last_active, strict=True):
            state, value = before[id(p)]
            if active:
                assert not torch.equal(p, value)
                continue
            seen_frozen += 1
            assert torch.equal(p, value)  # no update and no weight decay
            for key, tensor in state.items():
                assert torch.equal(opt.state[p][key], tensor), key  # momentum not accumulated
        assert all(p.grad is not None for p in params)  # gradients handed back
    assert seen_frozen > 3


def _replay_starts(seed: int, num_layers: int, steps: int) -> list[int]:
    """The documented draw: one multinomial over the start index per step, CPU generator."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.ones(num_layers, dtype=torch.float64)
    return [int(torch.multinomial(weights, 1, generator=gen)) for _ in range(steps)]


def test_matches_the_reference_on_the_drawn_layers() -> None:
    params = _params()
    refs = [p.detach().clone() for p in params]
    states: list[dict] = [{} for _ in params]
    counts = [0] * len(params)
    opt = DropMuon(params, lr=0.02, weight_decay=0.1, ns_dtype=None, seed=11)
    hp = {**opt.defaults}
    starts = _replay_starts(11, len(params), STEPS)
    for start, step_grads in zip(starts, _grads(), strict=True):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for i in range(start, len(params)):  # RPT: layers start..b are updated
            counts[i] += 1
            ref.muon(refs[i], step_grads[i], states[i], counts[i], hp)
        for p, r in zip(params, refs, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-10)
    assert 0 < min(counts) < max(counts) == STEPS


def test_progressive_start_index_follows_start_probs() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = (0.5, 0.0, 0.3, 0.2)
    starts = [sample_active_layers(4, gen, "progressive", probs).index(True) for _ in range(4000)]
    freq = [starts.count(i) / len(starts) for i in range(4)]
    assert freq[1] == 0.0
    assert all(abs(f - p) < 0.03 for f, p in zip(freq, probs, strict=True)), freq
    uniform = [sample_active_layers(5, gen).index(True) for _ in range(5000)]
    assert all(abs(uniform.count(i) / 5000 - 0.2) < 0.03 for i in range(5))
    fraction = [sum(sample_active_layers(10, gen, "independent", None, 0.3)) for _ in range(500)]
    assert abs(sum(fraction) / (500 * 10) - 0.3) < 0.02


def test_layer_group_key_drops_a_weight_and_its_bias_together() -> None:
    layers = [torch.nn.Linear(4, 4).double() for _ in range(3)]
    groups = [{"params": list(m.parameters()), "layer": i} for i, m in enumerate(layers)]
    opt = DropMuon(groups, lr=0.02, seed=4)
    for _ in range(6):
        before = [[p.detach().clone() for p in m.parameters()] for m in layers]
        for m in layers:
            for p in m.parameters():
                p.grad = torch.ones_like(p)
        opt.step()
        assert len(opt.last_active) == 3
        for m, old, active in zip(layers, before, opt.last_active, strict=True):
            changed = [not torch.equal(p, q) for p, q in zip(m.parameters(), old, strict=True)]
            assert changed == [active, active]
    mixed = DropMuon([{"params": [torch.zeros(2, 2)], "layer": 0}, {"params": [torch.zeros(2)]}])
    with pytest.raises(ValueError, match="layer"):
        mixed.step()


def test_nonfinite_gradient_on_a_frozen_layer_still_skips_the_group() -> None:
    params = _params()
    opt = DropMuon(params, lr=0.02, start_probs=(0.0, 0.0, 0.0, 0.0, 1.0))  # only the last
    for p, g in zip(params, _grads(1)[0], strict=True):
        p.grad = g.clone()
    params[0].grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in params]
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    raising = DropMuon(params, lr=0.02, start_probs=(0.0, 0.0, 0.0, 0.0, 1.0), nonfinite="raise")
    rng = raising.generator.get_state()
    with pytest.raises(FloatingPointError):
        raising.step()
    assert torch.equal(raising.generator.get_state(), rng)  # a failed step draws nothing


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sampling": "cyclic"}, "sampling"),
        ({"start_probs": (0.5, 0.6)}, "start_probs"),
        ({"start_probs": (1.5, -0.5)}, "start_probs"),
        ({"start_probs": "uniform"}, "start_probs"),
        ({"update_prob": 1.5}, "update_prob"),
        ({"update_prob": None}, "update_prob"),
        ({"seed": 1.5}, "seed"),
        ({"lr": -1.0}, "learning rate"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        DropMuon(_params(), **kwargs)


def test_start_probs_must_cover_every_layer() -> None:
    params = _params()
    opt = DropMuon(params, start_probs=(0.5, 0.5))
    for p, g in zip(params, _grads(1)[0], strict=True):
        p.grad = g
    with pytest.raises(ValueError, match="start_probs"):
        opt.step()
