"""torch.optim.SGD: zero_grad -> backward -> step, 20 rounds, and a run you can reproduce.

An optimiser owns references to the parameters and, on ``step()``, moves each one against its
``.grad``; for plain SGD that is ``p <- p - lr * grad``. Because ``backward()`` *adds* into
``.grad`` (autograd/02), every step starts with ``zero_grad()``. With the same seed (same
initial weights, same shuffling) the whole run repeats exactly on the CPU.

Claims proven:
  1. ``zero_grad()`` clears every ``.grad`` (to ``None``, the default ``set_to_none=True``).
  2. One ``optimizer.step()`` equals the hand update ``p - lr * grad`` for every parameter.
  3. Over 20 rounds (epochs) on a fixed learnable split of the CIFAR-shaped data, the loss
     falls.
  4. A second run with the same seed gives the same losses: bit-identical on the CPU (within
     1e-3 relative on GPUs, whose convolution kernels may add in varying order); a different
     seed gives a different run.

Run:  python nn_modules/10_nn_optim.py        (about 5-10 s on a 2-core laptop CPU)
"""

from __future__ import annotations

import torch
from torch import nn

from torchnotes import check, make_parser, progress, seed_everything, start
from torchnotes.datasets import add_data_args, cifar10_batch

FULL = dict(n_train=256, batch=32, rounds=20, lr=0.02)
SMOKE = dict(n_train=8, batch=8, rounds=20, lr=0.01)


# The same network as 07_nn_seq.py and training/model.py, kept inline so the script stands alone.
class Moli(nn.Module):
    """The spec's CIFAR-10 CNN (see 07_nn_seq.py for its shape table)."""

    def __init__(self):
        super().__init__()
        self.model1 = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(2),       # (N, 32, 16, 16)
            nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2),      # (N, 32, 8, 8)
            nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2),      # (N, 64, 4, 4)
            nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10),  # (N, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model1(x)


def train(images, labels, *, seed: int, rounds: int, batch: int, lr: float,
          show_progress: bool = False) -> list[float]:
    """Seed, build Moli, run ``rounds`` epochs of SGD; return each round's mean loss."""
    seed_everything(seed)                              # same seed -> same init, same shuffles
    model = Moli().to(images.device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    shuffler = torch.Generator().manual_seed(seed)
    n, losses = images.shape[0], []
    for _ in progress(range(rounds), desc="rounds", enabled=show_progress):
        order = torch.randperm(n, generator=shuffler)  # what DataLoader(shuffle=True) does
        total = 0.0
        for start_ in range(0, n, batch):
            idx = order[start_:start_ + batch].to(images.device)
            loss = loss_fn(model(images[idx]), labels[idx])
            optimizer.zero_grad()                      # 1. forget the last step's gradient
            loss.backward()                            # 2. fill .grad
            optimizer.step()                           # 3. p <- p - lr * p.grad
            total += loss.item() * idx.numel()
        losses.append(total / n)
    return losses


def step_1_one_step_by_hand(images, labels, lr: float) -> float:
    model = Moli().to(images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    nn.CrossEntropyLoss()(model(images), labels).backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    hand = torch.cat([(b - lr * g).flatten() for b, g in zip(before, grads, strict=True)])
    # step() computes p + (-lr) * grad, perhaps fused: within an ulp of values <= ~0.2.
    err = check("optimizer.step() == p - lr * grad, for all parameters", after, hand, atol=1e-7)
    optimizer.zero_grad()
    check("zero_grad() sets every .grad to None", all(p.grad is None for p in model.parameters()))
    return err


def step_2_loss_falls(losses: list[float]) -> float:
    shown = ", ".join(f"{x:.3f}" for x in losses[:: max(1, len(losses) // 5)])
    print(f"mean loss per round: {shown} ... {losses[-1]:.3f}")
    check(f"the loss fell over {len(losses)} rounds", losses[-1] < losses[0],
          detail=f"{losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses[0] - losses[-1]


def step_3_reproducible(first: list[float], images, labels, cfg: dict, seed: int,
                        device: torch.device) -> dict:
    again = train(images, labels, seed=seed, **cfg)
    # CPU kernels add in a fixed order: equal to the last bit. GPU convolution backward may add
    # in varying order (atomics), an ulp-level difference that 20 rounds grow to ~1e-4.
    rtol = 0.0 if device.type == "cpu" else 1e-3
    check(f"same seed, same {len(first)} round losses "
          f"({'bit-identical' if rtol == 0 else 'rtol 1e-3'})", torch.tensor(again),
          torch.tensor(first), rtol=rtol)
    other = train(images, labels, seed=seed + 1, **{**cfg, "rounds": 1})
    check("a different seed gives a different run (first round's loss differs)",
          other[0] != first[0], detail=f"{other[0]:.6f} vs {first[0]:.6f}")
    return {"repeat": again, "other_seed_first": other[0]}


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    images, labels = cifar10_batch(args, cfg.pop("n_train"), train=True, device=device)
    results = {"step_error": step_1_one_step_by_hand(images, labels, cfg["lr"])}
    print(f"training Moli: {images.shape[0]} images, batch {cfg['batch']}, "
          f"lr {cfg['lr']}, {cfg['rounds']} rounds")
    losses = train(images, labels, seed=args.seed, show_progress=not args.smoke, **cfg)
    results["losses"] = losses
    results["drop"] = step_2_loss_falls(losses)
    results.update(step_3_reproducible(losses, images, labels, cfg, args.seed, device))
    print(f"summary: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {cfg['rounds']} rounds; "
          f"the rerun matched")
    return results


if __name__ == "__main__":
    main()
