"""Per-sample gradients equal a batch-of-one loop (float64) for the common layer types."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from gradkit.privacy import per_sample_grads


def reference_loop(model, loss_fn, x, y):
    """The obviously-correct reference: one backward per example, batch of one."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for b in range(y.shape[0]):
        model.zero_grad()
        loss_fn(model(x[b : b + 1]), y[b : b + 1]).backward()
        rows.append([p.grad.clone() for p in params])
    return [torch.stack([r[i] for r in rows]) for i in range(len(params))]


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(13, 8)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, tokens):
        h = self.norm(self.embed(tokens))
        a, _ = self.attn(h, h, h)
        return self.head(a.mean(1))


class WithBuffer(nn.Module):
    """A buffer and a frozen parameter must be used but get no per-sample gradient."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 5))
        self.frozen = nn.Parameter(torch.ones(4), requires_grad=False)

    def forward(self, x):
        return self.fc(x * self.scale) + self.frozen


class NotVmappable(nn.Module):
    """Data-dependent Python control flow: vmap cannot run it; the loop fallback can."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        out = self.fc(x)
        return out * 2 if out.sum().item() > 0 else out


def _case(name, generator):
    b = 6
    if name == "linear":
        return nn.Linear(5, 4), torch.randn(b, 5, generator=generator)
    if name == "conv2d":
        return Conv(), torch.randn(b, 2, 8, 8, generator=generator)
    if name == "embedding":
        return nn.Sequential(nn.Embedding(13, 4), nn.Flatten(), nn.Linear(12, 4)), torch.randint(
            0, 13, (b, 3), generator=generator
        )
    if name == "layernorm":
        return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 4)), torch.randn(
            b, 5, generator=generator
        )
    if name == "attention":
        return Attention(), torch.randint(0, 13, (b, 5), generator=generator)
    return WithBuffer(), torch.randn(b, 5, generator=generator)


LAYERS = ["linear", "conv2d", "embedding", "layernorm", "attention", "buffers"]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize(("method", "chunk_size"), [("vmap", None), ("vmap", 4), ("loop", 4)])
def test_per_sample_grads_equal_batch_of_one_loop(layer, method, chunk_size):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model, x = _case(layer, g)
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    y = torch.randint(0, 4, (x.shape[0],), generator=g)
    got = per_sample_grads(model, F.cross_entropy, x, y, method=method, chunk_size=chunk_size)
    expected = reference_loop(model, F.cross_entropy, x, y)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(got) == names
    for name, ref in zip(names, expected, strict=True):
        torch.testing.assert_close(got[name], ref, rtol=1e-10, atol=1e-12)


def test_auto_falls_back_to_the_loop_when_vmap_fails():
    torch.manual_seed(1)
    model = NotVmappable().double()
    x, y = torch.randn(5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    with pytest.raises(Exception):  # noqa: B017 - torch.func raises version-dependent types
        per_sample_grads(model, F.cross_entropy, x, y, method="vmap")
    with pytest.warns(RuntimeWarning, match="falling back"):
        got = per_sample_grads(model, F.cross_entropy, x, y, chunk_size=2)
    for name, ref in zip(
        ["fc.weight", "fc.bias"], reference_loop(model, F.cross_entropy, x, y), strict=True
    ):
        torch.testing.assert_close(got[name], ref, rtol=1e-10, atol=1e-12)


def test_empty_batch_gives_empty_gradients():
    got = per_sample_grads(
        nn.Linear(3, 2), F.cross_entropy, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    )
    assert got["weight"].shape == (0, 2, 3) and got["bias"].shape == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"method": "hooks"}, "Invalid method"), ({"chunk_size": 0}, "Invalid chunk_size")],
)
def test_bad_options_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        per_sample_grads(
            nn.Linear(3, 2),
            F.cross_entropy,
            torch.zeros(2, 3),
            torch.zeros(2, dtype=torch.long),
            **kwargs,
        )


def test_mismatched_batch_sizes_are_refused():
    with pytest.raises(ValueError, match="batch size"):
        per_sample_grads(
            nn.Linear(3, 2), F.cross_entropy, torch.zeros(3, 3), torch.zeros(2, dtype=torch.long)
        )
