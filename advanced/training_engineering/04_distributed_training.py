"""Data parallelism: DataParallel vs DDP, a ring all-reduce by hand, mp.spawn on one machine.

Both split every batch across devices and keep one model copy per device; they differ in who
drives the copies and how gradients meet.

* ``nn.DataParallel`` (DP): ONE process drives every GPU. Each step it scatters the batch,
  re-copies (replicates) the model from GPU 0 onto every GPU, runs the copies in threads (under
  the GIL), gathers the outputs onto GPU 0 for the loss, and backward sums the gradients back
  onto GPU 0's copy, where the single optimizer steps. GPU 0 does extra work and holds extra
  memory; one machine only. PyTorch recommends DDP even on a single machine.
* ``DistributedDataParallel`` (DDP): ONE PROCESS PER DEVICE, each with its own model copy,
  optimizer and shard of the data. DDP broadcasts rank 0's weights once, at construction; then
  during ``backward()`` it all-reduces (averages) the gradients bucket by bucket, overlapped with
  the rest of backward, so every process takes the same optimizer step and the copies never
  drift apart. No per-step weight copies (only buffers, e.g. BatchNorm's running statistics,
  go from rank 0 at each forward: ``broadcast_buffers=True``); no master GPU; spans machines.

All-reduce (every rank ends with the sum of every rank's tensor) is done as a ring
(Patarasuk & Yuan 2009; popularised for deep learning by Baidu, 2017): split the tensor into N
chunks; N-1 steps of reduce-scatter (pass a chunk to the right neighbour, add what arrives from
the left) leave each rank with one fully summed chunk; N-1 steps of all-gather pass the summed
chunks round. Each rank sends 2(N-1)/N of the tensor, whatever N: bandwidth-optimal.

Claims proven (N worker processes started with ``mp.spawn``; gloo on CPU, NCCL on CUDA):
  1. The hand-written ring (point-to-point ``isend``/``irecv``) equals ``dist.all_reduce`` on
     every rank, and both equal the sum of the ranks' tensors computed here in one process.
  2. Each rank sends 2(N-1)/N times the tensor's size; DP's GPU 0 would receive N-1 copies.
  3. DDP broadcasts at construction: ranks that built different weights all hold rank 0's.
  4. DDP's averaged gradient over N shards equals the single-process gradient of the full
     batch (float32 rounding apart).
  5. After some SGD steps every replica is bitwise identical, and equal to single-process
     training on the full batch within float32 rounding.

Run:  python advanced/training_engineering/04_distributed_training.py [--world-size 4]
      (about 10 s on a 2-core laptop CPU: most of it is N fresh Python processes importing torch)
For a real multi-GPU (or multi-machine) job, launch with torchrun: training/04_train_ddp.py.
"""

from __future__ import annotations

import gc
import operator
import os
import runpy
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from torchnotes import check, make_parser, output_folder, start

FULL = dict(world_size=4, numel=1_000_000, features=32, hidden=64, classes=10, batch=64,
            steps=20, lr=0.1)
SMOKE = dict(world_size=3, numel=10_000, features=8, hidden=16, classes=4, batch=12,
             steps=3, lr=0.1)


# ---- the thing being taught: ring all-reduce from point-to-point messages -------------------

def ring_all_reduce(tensor: torch.Tensor) -> int:
    """Sum ``tensor`` over all ranks, in place, around a ring; return the elements sent."""
    rank, n = dist.get_rank(), dist.get_world_size()
    right, left = (rank + 1) % n, (rank - 1) % n
    chunks = tensor.view(-1).tensor_split(n)          # N views into the tensor's memory
    sent = 0
    # Reduce-scatter: after N-1 steps, rank r holds the full sum of chunk (r + 1) % N.
    for step in range(n - 1):
        out, into = chunks[(rank - step) % n], chunks[(rank - step - 1) % n]
        into += exchange(out, right, into, left)
        sent += out.numel()
    # All-gather: pass the finished chunks round; what arrives replaces the local chunk.
    for step in range(n - 1):
        out, into = chunks[(rank + 1 - step) % n], chunks[(rank - step) % n]
        into.copy_(exchange(out, right, into, left))
        sent += out.numel()
    return sent


def exchange(out: torch.Tensor, to: int, like: torch.Tensor, frm: int) -> torch.Tensor:
    """Send ``out`` to rank ``to`` while receiving a tensor shaped ``like`` from rank ``frm``."""
    received = torch.empty_like(like)
    # Everyone sends and receives at once; batching both makes that deadlock-free (NCCL too).
    ops = [dist.P2POp(dist.isend, out, to), dist.P2POp(dist.irecv, received, frm)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def rank_tensor(rank: int, numel: int) -> torch.Tensor:
    """What rank ``rank`` contributes to the all-reduce (the parent rebuilds it to check)."""
    return torch.randn(numel, generator=torch.Generator().manual_seed(100 + rank))


def make_model(cfg: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(cfg["features"], cfg["hidden"]), nn.ReLU(),
                         nn.Linear(cfg["hidden"], cfg["classes"]))


def batch(cfg: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The full batch of step ``step``: (B, D) inputs, (B,) labels; the same in every process."""
    g = torch.Generator().manual_seed(1000 + step)
    return (torch.randn(cfg["batch"], cfg["features"], generator=g),
            torch.randint(0, cfg["classes"], (cfg["batch"],), generator=g))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).cpu() for t in tensors])


# ---- one process per device: what mp.spawn starts ------------------------------------------

def worker(rank: int, world_size: int, rendezvous: str, backend: str, cfg: dict,
           out_dir: str) -> None:
    """Rank ``rank`` of ``world_size``: run the experiments, save what it saw for the parent."""
    torch.set_num_threads(1)               # N processes share the cores; no oversubscription
    if backend == "gloo" and sys.platform != "win32":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback_interface())
    # The processes find each other through a file (one machine: no port to pick, so no race
    # with another program for it); across machines it would be tcp://HOST:PORT or env://.
    dist.init_process_group(backend, init_method=rendezvous, rank=rank, world_size=world_size)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        mine = rank_tensor(rank, cfg["numel"]).to(device)
        ring, library = mine.clone(), mine.clone()
        sent = ring_all_reduce(ring)                        # by hand
        dist.all_reduce(library, op=dist.ReduceOp.SUM)      # PyTorch's (gloo/NCCL)

        model = make_model(cfg, seed=rank).to(device)       # different weights on every rank
        before = flat(model.parameters())
        ddp = DDP(model, device_ids=[rank] if device.type == "cuda" else None)
        after_broadcast = flat(model.parameters())
        optimizer = torch.optim.SGD(ddp.parameters(), lr=cfg["lr"])
        per_rank = cfg["batch"] // world_size
        grads = []
        for step in range(cfg["steps"]):
            x, y = batch(cfg, step)
            x = x[rank * per_rank:(rank + 1) * per_rank].to(device)   # (B/N, D) my shard
            y = y[rank * per_rank:(rank + 1) * per_rank].to(device)   # (B/N,)
            optimizer.zero_grad()
            F.cross_entropy(ddp(x), y).backward()    # DDP averages the grads during backward
            grads.append(flat(p.grad for p in model.parameters()))
            optimizer.step()
        result = dict(ring=ring.cpu(), library=library.cpu(), sent=sent, before=before,
                      after_broadcast=after_broadcast, first_grad=grads[0],
                      trained=flat(model.parameters()))
        torch.save(result, Path(out_dir) / f"rank_{rank}.pt")
        # DDP sits in a reference cycle: free it (and its hold on the process group) now, not
        # at the interpreter's exit, where gloo's threads abort (SIGABRT, 2 in 10 suite runs).
        del ddp, model, optimizer
        gc.collect()
    finally:
        dist.destroy_process_group()


def loopback_interface() -> str:
    """'lo' on Linux, 'lo0' on macOS: gloo then talks over 127.0.0.1, never the network."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else "lo"


def pick_backend(device: torch.device, world_size: int) -> str:
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if gpus >= world_size:
            return "nccl"                  # NVIDIA's collectives over NVLink/PCIe
        print(f"backend: {world_size} processes need {world_size} GPUs, this machine has "
              f"{gpus}: falling back to gloo on the CPU")
    elif device.type != "cpu":
        print(f"backend: torch.distributed has no {device.type} backend: gloo on the CPU")
    return "gloo"


def run_workers(cfg: dict, backend: str, out_dir: Path) -> list[dict]:
    """Start ``world_size`` processes with ``mp.spawn``, wait for all, read their results."""
    n = cfg["world_size"]
    folder = output_folder(out_dir, "ranks")   # emptied: no earlier run's results or store
    # mp.spawn(fn, args, nprocs) calls fn(rank, *args) in nprocs fresh processes ("spawn":
    # each re-imports torch) and raises here if any of them fails.
    rendezvous = (folder / "rendezvous").resolve().as_uri()          # file:///.../rendezvous
    mp.spawn(spawnable(worker), args=(n, rendezvous, backend, cfg, str(folder)), nprocs=n,
             join=True)
    return [torch.load(folder / f"rank_{r}.pt", weights_only=True) for r in range(n)]


# ---- the claims, checked in this (parent) process ------------------------------------------

def step_1_dp_vs_ddp(n: int, params: int) -> None:
    print("DataParallel:  1 process, threads; every step: scatter batch, replicate model to "
          "each GPU, gather outputs, sum grads on GPU 0")
    print("DDP:           1 process per device; weights broadcast once; grads all-reduced in "
          "backward; same optimizer step everywhere")
    print(f"per step with N={n}, P={params:,} parameters: DP's GPU 0 sends {n - 1}xP weights "
          f"and receives {n - 1}xP grads; each DDP rank sends 2(N-1)/N x P = "
          f"{2 * (n - 1) / n:.2f}xP")


def step_2_ring_all_reduce(results: list[dict], cfg: dict) -> float:
    n, numel = len(results), cfg["numel"]
    expected = sum(rank_tensor(r, numel) for r in range(n))     # one process, no messages
    # Float32 sums of N numbers in another order differ by a few units in the last place.
    for r, res in enumerate(results):
        check(f"rank {r}: ring all-reduce == dist.all_reduce", res["ring"], res["library"],
              rtol=1e-6)
    err = check("every rank holds the sum of all ranks' tensors",
                torch.stack([res["ring"] for res in results]),
                expected.expand(n, numel), rtol=1e-6)
    sent = [res["sent"] for res in results]
    print(f"elements sent per rank: {sent} for a tensor of {numel:,} ({n} ranks)")
    check(f"each rank sends 2(N-1)/N = {2 * (n - 1) / n:.2f}x the tensor",
          torch.tensor(sent, dtype=torch.float64),
          torch.full((n,), 2 * (n - 1) / n * numel, dtype=torch.float64), atol=2 * (n - 1),
          detail="chunks differ by at most one element")
    return err


def step_3_ddp_broadcasts(results: list[dict]) -> None:
    differ = sum(not torch.equal(res["before"], results[0]["before"]) for res in results[1:])
    print(f"before DDP(model): {differ} of {len(results) - 1} other ranks hold other weights")
    check("before DDP(model) every rank built its own weights (else the next claim is empty)",
          differ == len(results) - 1, detail=f"{differ} of {len(results) - 1} differ")
    check("after DDP(model) every rank holds rank 0's initial weights",
          all(torch.equal(res["after_broadcast"], results[0]["before"]) for res in results))


def step_4_ddp_gradient(results: list[dict], cfg: dict) -> float:
    model = make_model(cfg, seed=0)            # rank 0's initial weights: what DDP broadcast
    x, y = batch(cfg, 0)
    F.cross_entropy(model(x), y).backward()    # one process, the full batch of B samples
    full = flat(p.grad for p in model.parameters())
    per_rank = cfg["batch"] // len(results)
    print(f"gradient: {len(results)} ranks x {per_rank} samples vs 1 process x {cfg['batch']}")
    # mean over B = average over ranks of the mean over B/N: equal up to float32 rounding.
    return check("DDP's averaged gradient == the full batch's gradient in one process",
                 results[0]["first_grad"], full, atol=1e-6, rtol=1e-5)


def step_5_replicas_in_sync(results: list[dict], cfg: dict) -> float:
    check(f"after {cfg['steps']} steps all {len(results)} replicas are bitwise identical",
          all(torch.equal(res["trained"], results[0]["trained"]) for res in results))
    model = make_model(cfg, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    for step in range(cfg["steps"]):
        x, y = batch(cfg, step)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return check("DDP weights == single-process training on the full batch",
                 results[0]["trained"], flat(model.parameters()), atol=1e-5, rtol=1e-5)


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    parser.add_argument("--world-size", type=int, default=None,
                        help="processes to spawn (default: 4, smoke: 2)")
    args, device = start(parser, argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.world_size is not None:
        cfg["world_size"] = args.world_size
    n = cfg["world_size"]
    if not 2 <= n <= 64 or cfg["batch"] % n:
        sizes = [k for k in range(2, 65) if cfg["batch"] % k == 0]
        parser.error(f"--world-size {n}: expected one of {', '.join(map(str, sizes))} "
                     f"(2 to 64 processes that divide the batch of {cfg['batch']} evenly)")
    backend = pick_backend(device, n)
    print(f"spawning {n} processes | backend: {backend} | 127.0.0.1 only")
    results = run_workers(cfg, backend, args.out_dir)
    params = sum(p.numel() for p in make_model(cfg, seed=0).parameters())
    step_1_dp_vs_ddp(n, params)
    ring_err = step_2_ring_all_reduce(results, cfg)
    step_3_ddp_broadcasts(results)
    grad_err = step_4_ddp_gradient(results, cfg)
    weight_err = step_5_replicas_in_sync(results, cfg)
    print(f"summary: {n} processes ({backend}); ring vs sum {ring_err:.2g}, DDP vs one "
          f"process: gradient {grad_err:.2g}, weights after {cfg['steps']} steps "
          f"{weight_err:.2g}")
    return dict(world_size=n, backend=backend, ring_error=ring_err, grad_error=grad_err,
                weight_error=weight_err, sent=[r["sent"] for r in results])


# ---- plumbing, not the lesson: let mp.spawn find functions of a file loaded by path ----------

# mp.spawn pickles the function it starts by reference ("module.function"); each child imports
# that module to find it. `python this_file.py` works with the bare function (children re-run
# the file as __mp_main__), but a test or notebook that loaded this file by path has no
# importable name, so `spawnable(fn)` pickles as "run this file, take fn" instead. In your own
# project, put the worker in an importable module and pass it to mp.spawn directly.
class _ThisFile:
    def __reduce__(self):                    # unpickles as this file's globals, run afresh
        return runpy.run_path, (__file__,)


class _ByName:
    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args):
        return globals()[self.name](*args)

    def __reduce__(self):                    # unpickles as this file's function `name`
        return operator.itemgetter(self.name), (_THIS_FILE,)


_THIS_FILE = _ThisFile()                     # shared: the child runs the file once


def spawnable(fn):
    return _ByName(fn.__name__) if getattr(fn, "__module__", None) == __name__ else fn


if __name__ == "__main__":
    main()
