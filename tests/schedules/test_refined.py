"""The refined schedule against the paper's formula (Defazio et al. 2023, Algorithm 1)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from gradkit.schedules import GradNormRecorder, RefinedSchedule, median_smooth, refine_schedule
from gradkit.schedules.refined import filter_width


def reference_median_filter(norms, tau):
    """Width 2*(int(tau*T)//2)+1; indices before the start repeat norms[0] ('nearest'), indices
    past the end reflect without repeating the edge (numpy 'reflect'): T-1+k -> T-1-k."""
    T = len(norms)
    half = (2 * (int(tau * T) // 2) + 1) // 2
    out = []
    for i in range(T):
        window = []
        for j in range(i - half, i + half + 1):
            if j < 0:
                window.append(norms[0])
            elif j >= T:
                window.append(norms[2 * (T - 1) - j])
            else:
                window.append(norms[j])
        out.append(statistics.median(window))
    return out


def reference_refined(norms, tau, power):
    """Paper: g_hat = median filter; w_t = g_hat_t^-power; eta_t = w_t * sum_{p>t} w_p; eta/max."""
    smoothed = reference_median_filter(norms, tau)
    w = [g**-power for g in smoothed]
    eta = [w[t] * math.fsum(w[t + 1 :]) for t in range(len(w))]
    top = max(eta)
    return [e / top for e in eta]


def synthetic_norms(T=200, seed=0):
    """Gradient norms that fall quickly, plateau, then rise at the end, with outlier spikes."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) / T
    base = 1.0 + 4.0 * np.exp(-20 * t) + 3.0 * t**4
    noisy = base * np.exp(0.1 * rng.standard_normal(T))
    noisy[rng.choice(T, 6, replace=False)] *= 20.0  # spikes the median filter must remove
    return noisy.tolist()


@pytest.mark.parametrize("tau", [0.0, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("power", [2.0, 1.0])
def test_matches_paper_formula(tau, power):
    norms = synthetic_norms()
    got = refine_schedule(norms, smoothing=tau, power=power)
    assert got.tolist() == pytest.approx(reference_refined(norms, tau, power), rel=1e-12, abs=1e-15)
    assert got.max() == 1.0 and got[-1] == 0.0


def test_median_filter_matches_scipy_with_official_padding():
    ndimage = pytest.importorskip("scipy.ndimage")
    norms = np.asarray(synthetic_norms(T=997, seed=3))
    for tau in (0.01, 0.1, 0.5):
        width = filter_width(len(norms), tau)
        pad = 2 * width  # the official README's recipe
        expected = ndimage.median_filter(
            np.pad(norms, (0, pad), mode="reflect"), size=width, mode="nearest"
        )[:-pad]
        np.testing.assert_array_equal(median_smooth(norms, tau), expected)


def test_median_filter_chunking(monkeypatch):
    import gradkit.schedules.refined as refined

    norms = synthetic_norms(T=300)
    whole = median_smooth(norms, 0.2)
    monkeypatch.setattr(refined, "_MEDIAN_CHUNK_ELEMENTS", 7)
    np.testing.assert_array_equal(median_smooth(norms, 0.2), whole)


def test_constant_norms_give_linear_decay():
    got = refine_schedule([2.5] * 11, smoothing=0.1)
    assert got.tolist() == pytest.approx([1 - t / 10 for t in range(11)])


def test_shape_warmup_and_fast_annealing():
    # large norms early -> small early lr (warm-up); rising norms late -> fast annealing
    T = 400
    t = np.arange(T) / T
    norms = 1.0 + 4.0 * np.exp(-20 * t) + 3.0 * t**4
    refined = refine_schedule(norms, smoothing=0.05)
    peak = int(np.argmax(refined))
    assert T // 10 < peak < T // 2  # warm-up, then decay
    assert refined[0] < 0.1
    linear = 1 - np.arange(T) / (T - 1)
    assert refined[3 * T // 4] < 0.5 * linear[3 * T // 4]  # anneals faster than linear decay


def test_median_filter_removes_spikes():
    norms = [1.0] * 50
    norms[20] = 1000.0
    assert refine_schedule(norms, smoothing=0.1).tolist() == pytest.approx(
        refine_schedule([1.0] * 50, smoothing=0.1).tolist()
    )
    assert refine_schedule(norms, smoothing=0.0)[20] < 1e-3  # without smoothing it dips


def test_total_steps_interpolates_smoothed_norms():
    norms = synthetic_norms(T=100)
    smoothed = median_smooth(norms, 0.1)
    grid = np.interp(np.linspace(0, 1, 250), np.linspace(0, 1, 100), smoothed)
    w = grid**-2.0
    eta = np.array([w[t] * w[t + 1 :].sum() for t in range(250)])
    got = refine_schedule(norms, smoothing=0.1, total_steps=250)
    np.testing.assert_allclose(got, eta / eta.max(), rtol=1e-12)


def test_refined_schedule_callable():
    norms = synthetic_norms(T=50)
    s = RefinedSchedule.from_grad_norms(norms, smoothing=0.1, peak=0.5)
    table = refine_schedule(norms, smoothing=0.1)
    assert [s(t) for t in range(50)] == pytest.approx((0.5 * table).tolist())
    assert s(50) == 0.0 and s(10**6) == 0.0
    assert repr(s) == "RefinedSchedule(total_steps=50, peak=0.5, smoothing=0.1, power=2.0)"


@pytest.mark.parametrize(
    ("norms", "kwargs", "match"),
    [
        ([1.0], {}, "at least 2"),
        ([1.0, 0.0, 1.0], {}, "index 1"),
        ([1.0, float("nan")], {}, "index 1"),
        ([1.0, 2.0], {"smoothing": 1.5}, "smoothing"),
        ([1.0, 2.0], {"power": 0.0}, "power"),
        ([1.0, 2.0], {"total_steps": 1}, "total_steps"),
    ],
)
def test_bad_arguments(norms, kwargs, match):
    with pytest.raises(ValueError, match=match):
        refine_schedule(norms, **kwargs)


@pytest.mark.parametrize("norm_type", [1, 2])
def test_recorder_records_global_norm(norm_type):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    recorder = GradNormRecorder(norm_type=norm_type)
    handle = recorder.attach(opt)
    expected = []
    for _ in range(12):
        opt.zero_grad()
        model(torch.randn(16, 5)).square().mean().backward()
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
        expected.append(float(flat.abs().sum() if norm_type == 1 else flat.norm()))
        opt.step()
    handle.remove()
    opt.step()  # detached: not recorded
    assert recorder.norms == pytest.approx(expected, rel=1e-5)
    schedule = recorder.refined_schedule(smoothing=0.2)
    power = 2.0 if norm_type == 2 else 1.0
    assert schedule.multipliers == pytest.approx(
        refine_schedule(recorder.norms, smoothing=0.2, power=power).tolist()
    )


def test_recorder_state_dict_and_closure():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    recorder = GradNormRecorder()
    recorder.attach(opt)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # grad computed inside the closure, seen by the post-hook
    assert recorder.norms == pytest.approx([math.hypot(2.0, 4.0)])
    state = recorder.state_dict()
    other = GradNormRecorder()
    other.load_state_dict(state)
    assert other.norms == recorder.norms and len(other) == 1
    with pytest.raises(ValueError, match="norm_type"):
        GradNormRecorder(norm_type=1).load_state_dict(state)
    with pytest.raises(ValueError, match="norm_type"):
        GradNormRecorder(norm_type=3)
    with pytest.raises(ValueError, match="grad"):
        GradNormRecorder().record([torch.zeros(2)])
