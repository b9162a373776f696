"""Multi-process training, for real: 2 CPU processes over gloo, torchrun restarts, ring all-reduce.

The two torchrun jobs (an uninterrupted one and one whose rank 1 dies mid-run) start in the
background right after collection (tests/conftest.py), and run while the in-process tests of
this and earlier modules do; the last tests wait for them. Everything talks over 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import BACKGROUND, PREEXEC, REPO_ROOT, background, import_note
from torch.utils.data import DistributedSampler

from torchnotes import ClaimError, NoteError, passed_claims, reset_claims
from torchnotes.checkpoint import atomic_save, load_checkpoint

ADV = REPO_ROOT / "advanced/training_engineering/04_distributed_training.py"
TRAIN = REPO_ROOT / "training/04_train_ddp.py"
JOB_TIMEOUT_S = 240
# The README's `torchrun --standalone --nproc_per_node=2 training/04_train_ddp.py --resume`,
# kept on the loopback address: rendezvous on localhost (--standalone), the workers'
# MASTER_ADDR (--local-addr) and gloo's interface (GLOO_SOCKET_IFNAME below).
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          "--local-addr=127.0.0.1"]


@pytest.fixture(scope="module")
def adv():
    return import_note(ADV)


@pytest.fixture(scope="module")
def train04():
    return import_note(TRAIN)


def _start_jobs(root):
    """Both 2-process torchrun jobs, started right after collection (tests/conftest.py)."""
    started = {}
    # The restart line of the docstring sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1; without it
    # the restarted group read the dead group's addresses in 2 of 5 runs here.
    crash = {"TORCHNOTES_DIE_AT_STEP": "10", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    for name, restarts, extra in [("plain", 0, {}), ("crash", 1, crash)]:
        out, log = root / name, root / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k not in crash}
        env.update(GLOO_SOCKET_IFNAME="lo", TORCHNOTES_RUNS=str(root / "runs"), **extra)
        cmd = [*LAUNCH, f"--max-restarts={restarts}", str(TRAIN), "--resume",
               "--smoke", "--device", "cpu", "--out-dir", str(out)]
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    preexec_fn=PREEXEC)
        started[name] = dict(proc=proc, out=out, log=log)
    return started, [job["proc"] for job in started.values()]


BACKGROUND["torchrun_jobs"] = _start_jobs


@pytest.fixture(scope="module")
def torchrun_jobs():
    """The torchrun jobs (running or done); tests collect them with ``_finish``."""
    return background("torchrun_jobs")


def _finish(job) -> str:
    try:
        job["proc"].wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish in {JOB_TIMEOUT_S} s:\n{job['log'].read_text()}")
    text = job["log"].read_text()
    assert job["proc"].returncode == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def single(torchrun_jobs, train04, tmp_path_factory):
    """The same smoke run in this process, world size 1 (while the torchrun jobs run)."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # the torchrun workers run on one thread each
    reset_claims()
    try:
        result = train04.main(["--smoke", "--device", "cpu", "--out-dir", str(out)])
    finally:
        torch.set_num_threads(threads)
    return dict(result, claims=passed_claims(), out=out)


def _weights(out_dir) -> dict:
    return load_checkpoint(out_dir / "moli_ddp_epoch_2.pth")


# ---- training/04_train_ddp.py ---------------------------------------------------------------

def test_single_process_run_proves_its_claims(single):
    assert single["world_size"] == 1 and len(single["losses"]) == 16      # 2 epochs x 8 steps
    assert len(single["claims"]) >= 6, single["claims"]
    assert not dist.is_initialized()                    # the process group was torn down
    assert sorted(p.name for p in single["out"].iterdir()) == [
        ".lock", "moli_ddp_epoch_1.pth", "moli_ddp_epoch_1.pth.sha256",
        "moli_ddp_epoch_2.pth", "moli_ddp_epoch_2.pth.sha256"]


def test_refuses_an_earlier_run_without_resume(train04, tmp_path):
    (tmp_path / "moli_ddp_epoch_1.pth").write_bytes(b"an earlier run's file")
    with pytest.raises(NoteError, match="--resume"):
        train04.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert not dist.is_initialized()
    assert (tmp_path / "moli_ddp_epoch_1.pth").read_bytes() == b"an earlier run's file"


def test_resume_with_another_seed_is_refused_on_every_rank(train04, single, tmp_path):
    """Rank 0 refuses the folder and tells the others, who leave quietly (under torchrun they
    once died in a gloo 'Connection reset by peer' traceback after rank 0's error)."""
    out = tmp_path / "run"
    shutil.copytree(single["out"], out)
    with pytest.raises(NoteError, match=r"moli_ddp_epoch_2.pth was written by a run with other "
                                        r"settings \(seed 0 there, 3 here\)"):
        train04.main(["--smoke", "--device", "cpu", "--out-dir", str(out), "--resume",
                      "--seed", "3"])
    assert not dist.is_initialized()


def test_sampler_claims_fail_on_overlap_and_without_set_epoch(train04):
    n = 40
    shards = [DistributedSampler(range(n), num_replicas=2, rank=r, seed=0) for r in range(2)]
    good = []
    for s in shards:
        orders = {}
        for epoch in (0, 1):
            s.set_epoch(epoch)
            orders[epoch] = list(s)
        good.append(dict(orders=orders, fed={0: n // 2, 1: n // 2}))
    train04.step_2_sampler_shards(good, n)                      # the honest shards pass
    overlap = [good[0], dict(good[0], orders={e: list(o) for e, o in good[0]["orders"].items()})]
    with pytest.raises(ClaimError, match="disjoint"):
        train04.step_2_sampler_shards(overlap, n)
    # A DataLoader built with shuffle=True instead of sampler=: every rank reads all n.
    whole = [dict(g, fed={0: n, 1: n}) for g in good]
    with pytest.raises(ClaimError, match="fed exactly its shard"):
        train04.step_2_sampler_shards(whole, n)
    # Forgetting set_epoch: epoch 1 repeats epoch 0's order on every rank.
    same = [dict(g, orders={0: g["orders"][0], 1: g["orders"][0]}) for g in good]
    with pytest.raises(ClaimError, match="set_epoch"):
        train04.step_2_sampler_shards(same, n)


def test_replica_and_checkpoint_claims_can_fail(train04, tmp_path):
    w = [torch.zeros(3), torch.ones(2)]
    train04.step_4_replicas_identical([dict(weights=w), dict(weights=[t.clone() for t in w])])
    drifted = [w[0], w[1] + torch.finfo(torch.float32).eps]
    with pytest.raises(ClaimError, match="bitwise identical"):
        train04.step_4_replicas_identical([dict(weights=w), dict(weights=drifted)])
    with pytest.raises(ClaimError, match="went down"):
        train04.step_3_loss_went_down([2.3] * 8)
    moli = train04.Moli()
    path = atomic_save({"model": {f"module.{k}": v for k, v in moli.state_dict().items()}},
                       tmp_path / "wrapped.pth")       # ddp.state_dict(): "module." names
    with pytest.raises(ClaimError, match="plain Moli names"):
        train04.step_5_checkpoint_is_the_model(moli, path)
    other = atomic_save({"model": train04.Moli().state_dict()}, tmp_path / "other.pth")
    with pytest.raises(ClaimError, match="exactly the trained weights"):
        train04.step_5_checkpoint_is_the_model(moli, other)


# ---- advanced/training_engineering/04_distributed_training.py -------------------------------

def _ring_wrong_chunk(tensor: torch.Tensor) -> int:
    """The note's ring with one plausible slip: all-gather sends the chunk it just received
    a step too early (index rank - step instead of rank + 1 - step)."""
    rank, n = dist.get_rank(), dist.get_world_size()
    chunks = tensor.view(-1).tensor_split(n)
    for step in range(n - 1):
        into = chunks[(rank - step - 1) % n]
        into += _swap(chunks[(rank - step) % n], into, rank, n)
    for step in range(n - 1):
        into = chunks[(rank - step) % n]
        into.copy_(_swap(chunks[(rank - step) % n].clone(), into, rank, n))   # the slip
    return 2 * (n - 1) * chunks[0].numel()


def _swap(out, like, rank, n):
    received = torch.empty_like(like)
    ops = [dist.P2POp(dist.isend, out, (rank + 1) % n),
           dist.P2POp(dist.irecv, received, (rank - 1) % n)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def _ring_worker(rank: int, n: int, rendezvous: str, folder: str, note_ring) -> None:
    """One of N processes: the note's ring, the slipped ring and dist.all_reduce, side by side."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=n)
    try:
        mine = torch.randn(10_000, generator=torch.Generator().manual_seed(100 + rank))
        # 10,000 = 3,334 + 3,333 + 3,333 (unequal chunks); the slipped ring gets 9,999 (equal
        # chunks), so its wrong index changes the values, not the message sizes.
        out = dict(note=mine.clone(), slipped=mine[:9_999].clone())
        out["note_sent"] = note_ring(out["note"])
        _ring_wrong_chunk(out["slipped"])
        out["library"], out["library_9999"] = mine.clone(), mine[:9_999].clone()
        dist.all_reduce(out["library"])
        dist.all_reduce(out["library_9999"])
        torch.save(out, f"{folder}/rank_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("size", ["0", "5", "65"])
def test_a_world_size_that_cannot_split_the_batch_is_a_flag_error(adv, tmp_path, capsys, size):
    """0 once fell back to the default silently; 5 does not divide the smoke batch of 12."""
    with pytest.raises(SystemExit):
        adv.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path), "--world-size", size])
    assert (f"--world-size {size}: expected one of 2, 3, 4, 6, 12 (2 to 64 processes that "
            f"divide the batch of 12 evenly)") in capsys.readouterr().err


def test_ring_all_reduce_equals_dist_all_reduce_and_a_slip_is_caught(adv, tmp_path):
    import torch.multiprocessing as mp

    n = 3            # chunks of unequal size (10,000 / 3), two steps in each phase
    # Three real processes talking over gloo. On Linux they are forked from this one (0.1 s;
    # the DataLoader's default start method too): "spawn" would import torch and this file
    # afresh in each (~15 s of a 2-core machine). The smoke run covers the note's own mp.spawn.
    rendezvous = (tmp_path / "rendezvous").as_uri()    # a file store, as the note uses
    if sys.platform == "linux":
        mp.start_processes(_ring_worker, args=(n, rendezvous, str(tmp_path),
                                               adv.ring_all_reduce),
                           nprocs=n, join=True, start_method="fork")
    else:                        # macOS and Windows: fork is unsafe or missing there
        mp.spawn(_ring_worker, args=(n, rendezvous, str(tmp_path),
                                     adv.spawnable(adv.ring_all_reduce)), nprocs=n, join=True)
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=True) for r in range(n)]
    cfg = dict(adv.SMOKE, world_size=n, numel=10_000)
    note = [dict(ring=r["note"], library=r["library"], sent=r["note_sent"]) for r in ranks]
    reset_claims()
    adv.step_2_ring_all_reduce(note, cfg)                 # == dist.all_reduce, == the sum
    assert len(passed_claims()) == n + 2
    # Every chunk travels N-1 times in each phase; chunks differ by one element at most.
    sent = [r["note_sent"] for r in ranks]
    assert sum(sent) == 2 * (n - 1) * 10_000 and max(sent) - min(sent) <= 2
    slipped = [dict(ring=r["slipped"], library=r["library_9999"], sent=r["note_sent"])
               for r in ranks]
    with pytest.raises(ClaimError, match=r"ring all-reduce == dist.all_reduce"):
        adv.step_2_ring_all_reduce(slipped, dict(cfg, numel=9_999))


def _honest(adv, n: int) -> tuple[dict, list[dict]]:
    """What correct workers report, computed in one process (no spawn)."""
    cfg = dict(adv.SMOKE, world_size=n)
    total = sum(adv.rank_tensor(r, cfg["numel"]) for r in range(n))
    model = adv.make_model(cfg, seed=0)
    x, y = adv.batch(cfg, 0)
    F.cross_entropy(model(x), y).backward()
    grad = adv.flat(p.grad for p in model.parameters())
    trained = adv.make_model(cfg, seed=0)
    opt = torch.optim.SGD(trained.parameters(), lr=cfg["lr"])
    for step in range(cfg["steps"]):
        x, y = adv.batch(cfg, step)
        opt.zero_grad()
        F.cross_entropy(trained(x), y).backward()
        opt.step()
    start = adv.flat(adv.make_model(cfg, seed=0).parameters())
    return cfg, [dict(ring=total.clone(), library=total.clone(),
                      sent=2 * (n - 1) * cfg["numel"] // n,
                      before=adv.flat(adv.make_model(cfg, seed=r).parameters()),
                      after_broadcast=start.clone(), first_grad=grad.clone(),
                      trained=adv.flat(trained.parameters())) for r in range(n)]


def test_each_claim_of_the_note_can_fail(adv):
    cfg, good = _honest(adv, 2)
    adv.step_2_ring_all_reduce(good, cfg)
    adv.step_3_ddp_broadcasts(good)
    adv.step_4_ddp_gradient(good, cfg)
    adv.step_5_replicas_in_sync(good, cfg)

    def broken(**change):
        return [dict(good[0], **change), good[1]]

    # A ring that passes the whole tensor at every step: correct sums, 2(N-1)x the traffic.
    with pytest.raises(ClaimError, match=r"sends 2\(N-1\)/N"):
        adv.step_2_ring_all_reduce(broken(sent=2 * cfg["numel"]), cfg)
    with pytest.raises(ClaimError, match="sum of all ranks"):
        adv.step_2_ring_all_reduce([dict(r, ring=r["ring"] * 0.5, library=r["ring"] * 0.5)
                                    for r in good], cfg)
    with pytest.raises(ClaimError, match="rank 0's initial weights"):
        adv.step_3_ddp_broadcasts([good[0], dict(good[1], after_broadcast=good[1]["before"])])
    with pytest.raises(ClaimError, match="built its own weights"):          # seed=0 on every rank
        adv.step_3_ddp_broadcasts([good[0], dict(good[1], before=good[0]["before"])])
    # Without DDP each rank keeps the gradient of its own half of the batch.
    model = adv.make_model(cfg, seed=0)
    x, y = adv.batch(cfg, 0)
    half = cfg["batch"] // 2
    F.cross_entropy(model(x[:half]), y[:half]).backward()
    with pytest.raises(ClaimError, match="full batch's gradient"):
        adv.step_4_ddp_gradient(broken(first_grad=adv.flat(p.grad for p in model.parameters())),
                                cfg)
    with pytest.raises(ClaimError, match="full batch's gradient"):       # summed, not averaged
        adv.step_4_ddp_gradient(broken(first_grad=2 * good[0]["first_grad"]), cfg)
    with pytest.raises(ClaimError, match="bitwise identical"):
        adv.step_5_replicas_in_sync([good[0], dict(good[1], trained=good[1]["trained"] + 1e-7)],
                                    cfg)


def test_spawnable_pickles_this_files_function_by_path(adv):
    import pickle

    proxy = adv.spawnable(adv.rank_tensor)
    assert proxy(0, 4).equal(adv.rank_tensor(0, 4))
    restored = pickle.loads(pickle.dumps(proxy))         # what a spawned child does
    assert restored(1, 4).equal(adv.rank_tensor(1, 4))
    assert adv.spawnable(_ring_wrong_chunk) is _ring_wrong_chunk   # importable: as it is


# ---- the torchrun jobs (started after collection, run in the background) ------------------

def test_ddp_on_two_processes_equals_one_process(torchrun_jobs, single):
    log = _finish(torchrun_jobs["plain"])
    assert log.count("device: cpu") == 1 and log.count("✓") >= 7, log    # rank 0 talks only
    assert "all 2 replicas hold bitwise identical weights" in log
    assert sorted(p.name for p in torchrun_jobs["plain"]["out"].iterdir()) == sorted(
        p.name for p in single["out"].iterdir())                           # rank 0 writes only
    two = _weights(torchrun_jobs["plain"]["out"])
    loss_diff = (two["losses"] - torch.tensor(single["losses"], dtype=torch.float64)).abs()
    weight_diff = max((two["model"][k] - v).abs().max().item()
                      for k, v in single["weights"].items())
    print(f"2 processes vs 1: first loss diff {loss_diff[0]:.2g}, max |loss diff| "
          f"{loss_diff.max():.2g}, max |weight diff| {weight_diff:.2g}")
    # Step 1: the same 64 images and weights, the mean taken as two halves: float32 rounding.
    assert loss_diff[0] < 1e-5
    # Later steps: rounding differences grow through Adam, which moves every weight by up to
    # lr = 1e-3 per step whatever its gradient's size (a near-zero gradient whose sign flips
    # on rounding moves it the other way). Measured: losses 7e-5, weights 2e-4 after 16 steps.
    # A sharding bug (both ranks on the same 32 images) moves even the first loss by ~1e-3.
    assert loss_diff.max() < 5e-4
    assert weight_diff < 2e-3


def test_a_rank_that_dies_restarts_from_the_checkpoint_and_ends_equal(torchrun_jobs):
    jobs = torchrun_jobs
    plain = _weights(jobs["plain"]["out"]) if jobs["plain"]["proc"].poll() == 0 else None
    log = _finish(jobs["crash"])
    assert "TORCHNOTES_DIE_AT_STEP=10: exiting now" in log
    assert "continuing from moli_ddp_epoch_1.pth" in log           # the restart resumed,
    assert log.count("8 steps per epoch | from epoch 2") == 1           # at epoch 2, once
    if plain is None:
        _finish(jobs["plain"])
        plain = _weights(jobs["plain"]["out"])
    crash = _weights(jobs["crash"]["out"])
    assert crash["epoch"] == 2 and crash["step"] == 16
    assert torch.equal(crash["losses"], plain["losses"])
    assert all(torch.equal(crash["model"][k], plain["model"][k]) for k in plain["model"])
    for a, b in zip(crash["optimizer"]["state"].values(), plain["optimizer"]["state"].values(),
                    strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)      # Adam's moments and step counts
