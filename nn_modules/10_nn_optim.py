"""torch.optim.SGD: zero_grad -> backward -> step over a DataLoader, 20 rounds, reproducibly.

An optimiser owns references to the parameters and, on ``step()``, moves each one against its
``.grad``; for plain SGD that is ``p <- p - lr * grad``. Because ``backward()`` *adds* into
``.grad`` (autograd/02), every step starts with ``zero_grad()``. With the same seed (same
initial weights, same shuffling) the whole run repeats exactly on the CPU. Summing the losses
for a report must use ``loss.item()``: adding the loss *tensor* chains every step's graph.

Claims proven:
  1. Two ``optimizer.step()`` calls on two batches equal the hand updates: after the first,
     ``p - lr * g1``; after the second, ``p - lr * g1 - lr * g2`` (plain SGD keeps no memory
     of ``g1``; momentum would add ``0.9 * lr * g1``); ``zero_grad()`` clears every ``.grad``
     (to ``None``, the default).
  2. In the training loop, the ``.grad`` that ``step()`` uses on the second step is that
     batch's gradient alone (``torch.autograd.grad`` of its loss): ``zero_grad()`` cleared the
     first step's. Over 20 rounds (epochs) of the loader on a fixed training subset, the loss
     falls.
  3. A second run with the same seed gives the same losses (its first rounds are rerun):
     bit-identical on the CPU (within 1e-3 relative on GPUs, whose convolution kernels may add
     in varying order); a different seed gives a different run.
  4. ``running_loss = running_loss + loss`` (a tensor) requires grad and its graph reaches
     every step's loss: k steps, k loss nodes kept alive. ``loss.item()`` keeps a float.
  5. In an evaluation loop outside ``torch.no_grad()`` the summed loss keeps every batch's
     graph *with its activations*: one ``backward()`` through the sum still works.

Run:  python nn_modules/10_nn_optim.py        (about 10 s on a 2-core laptop CPU)
"""

from __future__ import annotations

import itertools

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from torchnotes import check, make_parser, progress, seed_everything, start
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

FULL = dict(n_train=256, batch_size=32, rounds=20, lr=0.02)
SMOKE = dict(n_train=16, batch_size=8, rounds=5, lr=0.01)


# The same network as 07_nn_seq.py and training/model.py, kept inline so the script stands alone.
class Moli(nn.Module):
    """The CIFAR-10 CNN of 07_nn_seq.py (see there for its shape table)."""

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


def load_train_subset(args, n_train: int):
    """The first ``n_train`` CIFAR-10 training images: real files when present, else stand-in."""
    transform = torchvision.transforms.ToTensor()
    if use_real(args, "CIFAR-10"):
        root = args.data_root or data_root()
        with torchvision_errors("CIFAR-10", root, args.download):
            dataset = torchvision.datasets.CIFAR10(root, train=True, transform=transform,
                                                   download=args.download)
        return torch.utils.data.Subset(dataset, range(n_train))   # a fixed subset: fast rounds
    return SyntheticCIFAR10(train=True, transform=transform, size=n_train, seed=args.seed)


def train(dataset, *, seed: int, rounds: int, batch_size: int, lr: float, device,
          show_progress: bool = False, check_grad: bool = False) -> list[float]:
    """Seed, build Moli, run ``rounds`` epochs of SGD; return each round's mean loss.

    ``check_grad``: on the second step, check that ``step()`` sees only this batch's gradient.
    """
    seed_everything(seed)                              # same seed -> same init
    model = Moli().to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))   # same shuffles
    losses, step = [], 0
    for _ in progress(range(rounds), desc="rounds", enabled=show_progress):
        running_loss = 0.0
        for imgs, targets in loader:
            imgs, targets = imgs.to(device), targets.to(device)
            loss = loss_fn(model(imgs), targets)
            probe = check_grad and step == 1           # step 1's .grad would still be there
            alone = torch.autograd.grad(loss, list(model.parameters()),
                                        retain_graph=True) if probe else None
            optimizer.zero_grad()                      # 1. forget the last step's gradient
            loss.backward()                            # 2. fill .grad
            if probe:
                check_step_sees_this_batch_only(model, alone)
            optimizer.step()                           # 3. p <- p - lr * p.grad
            step += 1
            running_loss += loss.item() * imgs.shape[0]   # .item(): a float, graph freed
        losses.append(running_loss / len(dataset))
    return losses


def check_step_sees_this_batch_only(model: Moli, alone) -> float:
    """Right before step(): every .grad == this batch's own gradient (no leftover added)."""
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                       for p in model.parameters()])
    # The same backward kernels on the same graph: bit-equal on a CPU; a GPU's convolution
    # backward may add in another order (atomics). A leftover gradient is off by ~0.1.
    rtol = 1e-6 if grads.device.type == "cpu" else 1e-3
    return check("loop, step 2: .grad at step() == this batch's gradient alone (no leftover)",
                 grads, torch.cat([g.flatten() for g in alone]), rtol=rtol)


def flat(model: Moli) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def step_1_two_steps_by_hand(two_batches, lr: float) -> float:
    model, loss_fn = Moli().to(two_batches[0][0].device), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    start_p, grads = flat(model), []
    for imgs, targets in two_batches:
        optimizer.zero_grad()
        loss_fn(model(imgs), targets).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))   # g1, g2
        optimizer.step()
        if len(grads) == 1:
            # step() computes p + (-lr) * grad, perhaps fused: within an ulp of values <= ~0.2.
            check("first step() == p - lr * g1, for all parameters", flat(model),
                  start_p - lr * grads[0], atol=1e-7)
    g1, g2 = grads
    # Two roundings now: within 2 ulps. Momentum 0.9 would add 0.9 * lr * g1 (~1e-3 here).
    err = check("second step() == p - lr * g1 - lr * g2: plain SGD, no momentum",
                flat(model), start_p - lr * g1 - lr * g2, atol=2e-7)
    optimizer.zero_grad()
    check("zero_grad() sets every .grad to None", all(p.grad is None for p in model.parameters()))
    return err


def step_2_loss_falls(losses: list[float]) -> float:
    shown = ", ".join(f"{x:.3f}" for x in losses[:: max(1, len(losses) // 5)])
    print(f"mean loss per round: {shown} ... {losses[-1]:.3f}")
    check(f"the loss fell over {len(losses)} rounds", losses[-1] < losses[0],
          detail=f"{losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses[0] - losses[-1]


def step_3_reproducible(first: list[float], dataset, cfg: dict, seed: int, device,
                        rerun_rounds: int = 3) -> dict:
    rerun = min(rerun_rounds, len(first))          # a few rounds prove it; 20 would double the run
    again = train(dataset, seed=seed, device=device, **{**cfg, "rounds": rerun})
    # CPU kernels add in a fixed order: equal to the last bit. GPU convolution backward may add
    # in varying order (atomics), an ulp-level difference that a few rounds grow to ~1e-5.
    rtol = 0.0 if device.type == "cpu" else 1e-3
    check(f"same seed, same losses in the first {rerun} rounds "
          f"({'bit-identical' if rtol == 0 else 'rtol 1e-3'})", torch.tensor(again),
          torch.tensor(first[:rerun]), rtol=rtol)
    other = train(dataset, seed=seed + 1, device=device, **{**cfg, "rounds": 1})
    check("a different seed gives a different run (first round's loss differs)",
          other[0] != first[0], detail=f"{other[0]:.6f} vs {first[0]:.6f}")
    return {"repeat": again, "other_seed_first": other[0]}


def loss_nodes(total: torch.Tensor) -> int:
    """How many cross-entropy losses ``total``'s graph still reaches (walks grad_fn links)."""
    seen, todo, found = set(), [getattr(total, "grad_fn", None)], 0
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        found += node.name().startswith("NllLoss")         # CrossEntropyLoss ends in NLL
        todo.extend(next_node for next_node, _ in node.next_functions)
    return found


def step_4_running_loss_tensor(dataset, batch_size: int, lr: float, device) -> dict:
    model, loss_fn = Moli().to(device), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    running_loss, steps = 0.0, 0
    for imgs, targets in DataLoader(dataset, batch_size=batch_size):
        loss = loss_fn(model(imgs.to(device)), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss = running_loss + loss            # the bug: a tensor, with its graph
        steps += 1
    kept = loss_nodes(running_loss)
    print(f"running_loss = running_loss + loss over {steps} steps: {running_loss!r:.45}...; "
          f"its graph reaches {kept} loss nodes")
    check("a tensor running_loss requires grad and reaches every step's loss graph",
          getattr(running_loss, "requires_grad", False) and kept == steps,
          detail=f"{kept} of {steps} steps")
    print(f"with loss.item() the sum is a {type(loss.item()).__name__}: no graph at all")
    return {"steps": steps, "loss_nodes_kept": kept, "model": model}


def step_5_eval_without_no_grad(model: Moli, dataset, batch_size: int, device) -> int:
    loss_fn, total, steps = nn.CrossEntropyLoss(), 0.0, 0
    for imgs, targets in DataLoader(dataset, batch_size=batch_size):   # no torch.no_grad()
        steps += 1
        total = total + loss_fn(model(imgs.to(device)), targets.to(device))
    held = loss_nodes(total)
    check("evaluation without no_grad(): the summed loss keeps every batch's graph",
          getattr(total, "requires_grad", False) and held == steps,
          detail=f"{held} of {steps} batches")
    model.zero_grad()
    total.backward()               # works: every batch's saved activations are still in memory
    print(f"backward() through that sum filled conv1's grad: "
          f"{model.model1[0].weight.grad is not None} (so all those activations were kept)")
    return held


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    dataset = load_train_subset(args, cfg.pop("n_train"))
    two_batches = [(imgs.to(device), targets.to(device)) for imgs, targets in
                   itertools.islice(DataLoader(dataset, batch_size=cfg["batch_size"]), 2)]
    results = {"step_error": step_1_two_steps_by_hand(two_batches, cfg["lr"])}
    print(f"training Moli: {len(dataset)} images, batch {cfg['batch_size']}, "
          f"lr {cfg['lr']}, {cfg['rounds']} rounds")
    losses = train(dataset, seed=args.seed, device=device, show_progress=not args.smoke,
                   check_grad=True, **cfg)
    results["losses"] = losses
    results["drop"] = step_2_loss_falls(losses)
    results.update(step_3_reproducible(losses, dataset, cfg, args.seed, device))
    kept = step_4_running_loss_tensor(dataset, cfg["batch_size"], cfg["lr"], device)
    results["loss_nodes_kept"] = kept["loss_nodes_kept"]
    results["eval_graphs_held"] = step_5_eval_without_no_grad(kept["model"], dataset,
                                                              cfg["batch_size"], device)
    print(f"summary: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {cfg['rounds']} rounds; "
          f"the rerun matched")
    return results


if __name__ == "__main__":
    main()
