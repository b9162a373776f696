r"""Multi-process training with DDP and torchrun: the Moli flow on N processes, restartable.

torchrun starts one process per device and tells each who it is (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``). Each process wraps Moli in
``DistributedDataParallel`` and reads its own shard of the data through ``DistributedSampler``;
DDP averages the gradients during ``backward()``, so every copy takes the same step. The global
batch stays ``batch_size`` whatever N (each rank takes batch_size/N), so N processes compute
the same steps as one process (tests check: equal within float32 rounding). Only rank 0
prints, evaluates and writes checkpoints; if a process dies, torchrun restarts the whole group
(``--max-restarts``) and ``--resume`` continues from the newest valid checkpoint.

Claims proven (in rank 0, from what every rank reports):
  1. DistributedSampler gives each rank a disjoint shard; together they cover the training set
     once per epoch; each rank's DataLoader feeds exactly its shard (``sampler=``); and
     ``set_epoch(epoch)`` reshuffles every epoch (forget it and every epoch repeats the order).
  2. The training loss goes down (the global batch's loss: the mean over ranks).
  3. Test accuracy is far above chance (10 classes: 10%).
  4. With N > 1: every replica ends with bitwise identical weights.
  5. The last checkpoint (SHA-256 checked, ``weights_only=True``) holds exactly the trained
     weights under plain names: save ``ddp.module.state_dict()``, not ``ddp.state_dict()``
     (whose keys start with ``module.`` and do not fit a plain Moli).

Run on one machine (1 process, then 2, then 2 that torchrun restarts once if one dies):
  python training/04_train_ddp.py                  (about 20 s on a 2-core laptop CPU)
  torchrun --standalone --nproc_per_node=2 training/04_train_ddp.py --resume
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --nproc_per_node=2 \
      --max-restarts=1 training/04_train_ddp.py --resume
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives each restart a fresh rendezvous store: by default a
restarted group can read the dead group's addresses ("Connection refused"; pytorch#135712).
On several machines: the same line on each ($HOST: one machine's address that all can reach;
each machine needs the data):
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes=2 --nproc_per_node=4 \
      --rdzv-backend=c10d --rdzv-endpoint=$HOST:29500 --rdzv-id=moli --max-restarts=3 \
      training/04_train_ddp.py --device cuda --resume
Backends: NCCL with ``--device cuda`` (one GPU per process), else gloo on the CPU.
Fault drill: ``TORCHNOTES_DIE_AT_STEP=200`` makes the last rank exit at step 200 (epoch 2) on
the first attempt: with the restart line above, torchrun restarts from the epoch-1 checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
import time

import torch
import torch.distributed as dist
import torchvision
from model import Moli, evaluate, run_settings
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import transforms

from torchnotes import NoteError, check, make_parser, prepare_out_dir, start
from torchnotes.checkpoint import (
    RunLock,
    atomic_save,
    load_checkpoint,
    load_optimizer,
    load_weights,
    resume_or_start,
    rng_state,
    set_rng_state,
)
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

# batch_size is the GLOBAL batch: each of N ranks takes batch_size / N of it.
FULL = dict(train_size=8_192, test_size=2_000, epochs=3, batch_size=64, lr=1e-3,
            min_accuracy=0.85)
SMOKE = dict(train_size=512, test_size=256, epochs=2, batch_size=64, lr=1e-3,
             min_accuracy=0.20)
REAL = dict(FULL, train_size=None, test_size=None, epochs=10, min_accuracy=0.40)
PATTERN = "moli_ddp_epoch_*.pth"
DIE_ENV_VAR = "TORCHNOTES_DIE_AT_STEP"


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group; return (rank, world size, this process's device)."""
    if "RANK" in os.environ:            # started by torchrun: it set RANK, WORLD_SIZE, ...
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    else:                               # plain `python`: a group of one
        rank, world, local, local_world = 0, 1, 0, 1
    if device.type == "cuda" and torch.cuda.device_count() >= local_world:
        backend, device = "nccl", torch.device("cuda", local)   # one GPU per process
        torch.cuda.set_device(device)
    else:
        if device.type != "cpu" and rank == 0:
            print(f"backend: {local_world} processes on {device.type} need NCCL and one GPU "
                  f"each; falling back to gloo on the CPU")
        backend, device = "gloo", torch.device("cpu")
    if "RANK" in os.environ:
        dist.init_process_group(backend)          # env://: MASTER_ADDR/PORT from torchrun
    else:                                         # no torchrun: an in-memory store, no port
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return rank, world, device


def datasets(args, cfg: dict, rank: int):
    to_tensor = transforms.ToTensor()           # PIL (32, 32) RGB -> float (3, 32, 32) in [0,1]
    if not use_real(args, verbose=rank == 0):   # the stand-in: same interface, no download
        return (SyntheticCIFAR10(train=True, transform=to_tensor, size=cfg["train_size"],
                                 seed=args.seed),
                SyntheticCIFAR10(train=False, transform=to_tensor, size=cfg["test_size"],
                                 seed=args.seed), False)
    root = args.data_root or data_root()
    if rank != 0:
        dist.barrier()                          # rank 0 downloads (if asked) while we wait
    with torchvision_errors("CIFAR-10", root, args.download):
        train = torchvision.datasets.CIFAR10(root, train=True, transform=to_tensor,
                                             download=args.download and rank == 0)
        test = torchvision.datasets.CIFAR10(root, train=False, transform=to_tensor)
    if rank == 0:
        dist.barrier()
    if cfg["train_size"] is not None:
        train, test = Subset(train, range(cfg["train_size"])), Subset(test, range(cfg["test_size"]))
    return train, test, True


def maybe_die(step: int, rank: int, world: int) -> None:
    """The fault drill: the last rank exits at ``$TORCHNOTES_DIE_AT_STEP`` on the first try."""
    if (os.environ.get(DIE_ENV_VAR) == str(step) and rank == world - 1
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
        print(f"rank {rank}: {DIE_ENV_VAR}={step}: exiting now (a simulated crash)",
              file=sys.stderr, flush=True)
        os._exit(1)


def step_1_train(args, cfg: dict, rank: int, world: int, device: torch.device,
                 resumed: dict | None) -> dict:
    train_set, test_set, real = datasets(args, cfg, rank)
    # The sampler shards the data: rank r takes every N-th index of one seeded permutation.
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed)
    # shuffle=False: the sampler already shuffles (DataLoader refuses both).
    loader = DataLoader(train_set, batch_size=cfg["batch_size"] // world, sampler=sampler)
    model = Moli().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    losses, first_epoch = [], 0
    if resumed is not None:                     # the same checkpoint on every rank
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        set_rng_state(resumed["rng"])
        losses, first_epoch = resumed["losses"].tolist(), resumed["epoch"]
    # DDP copies rank 0's weights to every rank, then all-reduces gradients inside backward().
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)  # this GPU
    loss_fn = nn.CrossEntropyLoss()
    orders, fed, epochs = {}, {}, []
    print(f"{world} process(es) x {cfg['batch_size'] // world} images = global batch "
          f"{cfg['batch_size']} | {len(loader)} steps per epoch | from epoch {first_epoch + 1}")
    for epoch in range(first_epoch, cfg["epochs"]):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)          # a new shuffle every epoch, the same on every rank
        orders[epoch] = list(sampler)     # this rank's indices for the epoch (for claim 1)
        ddp.train()
        mine = []
        for imgs, targets in loader:                             # this rank's shard
            imgs, targets = imgs.to(device), targets.to(device)  # (B/N, 3, 32, 32), (B/N,)
            loss = loss_fn(ddp(imgs), targets)                   # mean over MY B/N images
            optimizer.zero_grad()
            loss.backward()                 # DDP all-reduces: every rank gets the mean grad
            optimizer.step()                # same grads, same weights: the same step
            mine.append(loss.item())
            fed[epoch] = fed.get(epoch, 0) + len(targets)        # what the loader delivered
            maybe_die(len(losses) + len(mine), rank, world)
        # Each rank saw its own losses; their mean is the global batch's loss.
        step_losses = torch.tensor(mine, dtype=torch.float64, device=device)
        dist.all_reduce(step_losses)
        losses += (step_losses / world).tolist()
        if rank == 0:             # one process evaluates, logs and saves; the others wait
            test_loss, test_acc = evaluate(ddp.module, DataLoader(test_set, batch_size=256),
                                           loss_fn, device)
            path = args.out_dir / f"moli_ddp_epoch_{epoch + 1}.pth"
            atomic_save({"model": ddp.module.state_dict(),     # plain keys, no "module."
                         "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                         "step": len(losses),
                         "losses": torch.tensor(losses, dtype=torch.float64),
                         "rng": rng_state(), "world_size": world,
                         # DistributedSampler's order is a function of (seed, epoch) only
                         "sampler": {"seed": args.seed, "epoch": epoch + 1},
                         "settings": run_settings(args)}, path)   # --resume checks these
            epochs.append(dict(epoch=epoch + 1, test_accuracy=test_acc, checkpoint=path,
                               seconds=time.perf_counter() - t0))
            print(f"epoch {epoch + 1}: train loss {losses[-1]:.3f} | test loss "
                  f"{test_loss:.3f} | test accuracy {test_acc:.1%} | "
                  f"{epochs[-1]['seconds']:.1f} s | {path.name}")
        dist.barrier()
    gathered = [None] * world
    dist.all_gather_object(gathered, dict(orders=orders, fed=fed, weights=[
        t.detach().cpu() for t in ddp.module.state_dict().values()]))
    return dict(model=ddp.module, losses=losses, epochs=epochs, ranks=gathered, real=real,
                n_train=len(train_set))


def step_2_sampler_shards(ranks: list[dict], n_train: int) -> None:
    trained = sorted(ranks[0]["orders"])
    for epoch in trained:
        shards = [r["orders"][epoch] for r in ranks]
        together = [i for shard in shards for i in shard]
        # DistributedSampler pads to a multiple of N by repeating the first few indices.
        padded = -(-n_train // len(shards)) * len(shards) - n_train
        check(f"epoch {epoch + 1}: {len(shards)} shard(s) of {len(shards[0])} are disjoint "
              f"and cover the {n_train} images once" + (f" (+{padded} repeated)" if padded
                                                         else ""),
              sorted(set(together)) == list(range(n_train))
              and len(together) == n_train + padded)
        fed = [r["fed"].get(epoch, 0) for r in ranks]
        check(f"epoch {epoch + 1}: each rank's DataLoader (sampler=) fed exactly its shard "
              f"({len(shards[0])} images), not all {n_train}",
              fed == [len(shard) for shard in shards], detail=f"images fed per rank {fed}")
    if len(trained) < 2:
        print("one epoch trained in this run: reshuffling between epochs not shown")
        return
    check("set_epoch() reshuffles: rank 0 sees another order in the next epoch",
          ranks[0]["orders"][trained[0]] != ranks[0]["orders"][trained[1]])


def step_3_loss_went_down(losses: list[float]) -> None:
    k = max(1, min(10, len(losses) // 4))           # a few steps at each end of the run
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    check("the training loss went down", last < 0.8 * first,
          detail=f"mean of {k} steps: {first:.3f} at the start -> {last:.3f} at the end")


def step_4_replicas_identical(ranks: list[dict]) -> None:
    if len(ranks) == 1:
        print("one process: a single replica (run with torchrun to compare replicas)")
        return
    check(f"all {len(ranks)} replicas hold bitwise identical weights",
          all(torch.equal(a, b) for r in ranks[1:]
              for a, b in zip(r["weights"], ranks[0]["weights"], strict=True)))


def step_5_checkpoint_is_the_model(model: nn.Module, path) -> None:
    state = load_checkpoint(path)["model"]           # SHA-256 first, then weights_only=True
    names = list(Moli().state_dict())
    check(f"{path.name} uses plain Moli names (ddp.module.state_dict())", list(state) == names,
          detail=f"first key {next(iter(state), None)!r}")
    trained = model.state_dict()
    check(f"{path.name} holds exactly the trained weights",
          all(torch.equal(state[k], trained[k].cpu()) for k in names))


def main(argv=None) -> dict:
    rank = int(os.environ.get("RANK", "0"))
    # Only rank 0 talks: the others' prints (and check lines) go nowhere.
    with contextlib.redirect_stdout(io.StringIO()) if rank else contextlib.nullcontext():
        return run(argv)


def run(argv) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in --out-dir")
    args, device = start(parser, argv)
    rank, world, device = init_distributed(device)
    try:
        cfg = SMOKE if args.smoke else (REAL if use_real(args, verbose=False) else FULL)
        if cfg["batch_size"] % world:
            raise NoteError(f"the global batch {cfg['batch_size']} must split evenly over "
                            f"{world} processes; use a world size that divides it")
        # Only rank 0 touches --out-dir (other machines may not see it): it locks it, picks a
        # fresh start or --resume, and sends the others the checkpoint or the news to stop.
        with contextlib.ExitStack() as held:
            found, refused = None, None
            if rank == 0:
                try:
                    held.enter_context(RunLock(prepare_out_dir(args.out_dir)))
                    found = resume_or_start(args.out_dir, resume=args.resume,
                                            overwrite=args.overwrite, pattern=PATTERN,
                                            settings=run_settings(args),
                                            keys=("model", "optimizer", "rng", "losses",
                                                  "epoch"), epochs=cfg["epochs"])
                    if found:             # a file of another model stops here, on rank 0
                        load_weights(probe := Moli(), found[1]["model"], source=str(found[0]))
                        load_optimizer(torch.optim.Adam(probe.parameters()),
                                       found[1]["optimizer"], source=str(found[0]))
                except NoteError as err:
                    refused = err
            box = [found[1] if found else None, refused is not None]
            dist.broadcast_object_list(box, src=0)
            if box[1]:                    # rank 0 says why; the others leave without a word
                raise refused if rank == 0 else SystemExit(1)
            out = step_1_train(args, cfg, rank, world, device, box[0])
        # DDP sits in a reference cycle: free it (and its process group) now, not at exit,
        # where gloo's threads die with SIGABRT.
        gc.collect()
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return dict(rank=rank, losses=out["losses"])
    step_2_sampler_shards(out["ranks"], out["n_train"])
    step_3_loss_went_down(out["losses"])
    acc = out["epochs"][-1]["test_accuracy"] if out["epochs"] else None
    if acc is not None:
        check(f"final test accuracy >= {cfg['min_accuracy']:.0%} (chance is 10%)",
              acc >= cfg["min_accuracy"], detail=f"{acc:.1%}")
        step_5_checkpoint_is_the_model(out["model"], out["epochs"][-1]["checkpoint"])
    step_4_replicas_identical(out["ranks"])
    seconds = sum(e["seconds"] for e in out["epochs"])
    print(f"summary: {world} process(es), {len(out['losses'])} steps, test accuracy "
          f"{acc if acc is None else f'{acc:.1%}'}, {seconds:.1f} s; checkpoints in "
          f"{args.out_dir}")
    return dict(rank=0, world_size=world, losses=out["losses"], test_accuracy=acc,
                weights={k: v.detach().cpu() for k, v in out["model"].state_dict().items()},
                epochs=out["epochs"], seconds=seconds)


if __name__ == "__main__":
    main()
