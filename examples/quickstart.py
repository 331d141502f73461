"""gradkit in a minute: a drop-in optimizer, a scheduler, and a chain of your own.

python examples/quickstart.py
"""

import torch

import gradkit

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
x = torch.randn(256, 10)
y = x[:, :1] * 2.0 - x[:, 1:2]

# A drop-in torch.optim optimizer: same arguments and numbers as torch.optim.AdamW.
opt = gradkit.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
for _ in range(200):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()  # a NaN/inf gradient would skip the step, state untouched
    sched.step()
print(f"AdamW: final loss {loss.item():.4f}")

# Your own optimizer from transforms: Nesterov momentum on an Adam-preconditioned gradient.
mine = gradkit.ChainOptimizer(
    model.parameters(),
    gradkit.chain(
        gradkit.scale_by_adam(), gradkit.trace(momentum=0.5, nesterov=True), gradkit.scale_by_lr()
    ),
    lr=1e-3,
)
for _ in range(50):
    mine.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    mine.step()
print(
    f"custom chain: final loss {loss.item():.4f}; state keys {sorted(mine.state[model[0].weight])}"
)

for info in gradkit.optim.available():
    print(f"{info.name:12s} {info.year}  {info.state_bytes_per_param:4.1f} B/param  {info.paper}")
