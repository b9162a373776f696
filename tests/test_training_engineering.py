"""Unit tests for advanced/training_engineering 01-03: the exposed functions pinned against
PyTorch's own schedulers, optimizers and autocast, the TensorBoard schedules read back, and proof
that every claim family can fail (a wrong version monkeypatched into the note raises ClaimError).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from tb_events import merged
from torch import nn
from torch.optim import lr_scheduler

from torchnotes import ClaimError

CPU = torch.device("cpu")
OPT = "advanced/training_engineering/01_optimizer_scheduler.py"
AMP = "advanced/training_engineering/02_amp_training.py"
CKPT = "advanced/training_engineering/03_gradient_checkpoint.py"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def smoke(mod, tmp_path):
    return mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])


# -------------------------------------------------------------------- 01 optimizer / scheduler

@pytest.mark.parametrize("warmup,total,min_ratio", [(1, 10, 0.0), (5, 50, 0.1), (10, 11, 0.5)])
def test_warmup_cosine_lambda_matches_sequential_lr(note, warmup, total, min_ratio):
    mod = note(OPT)
    f = mod.warmup_cosine_lambda(warmup, total, min_ratio)
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    first = (lr_scheduler.LinearLR(opt, 1 / warmup, total_iters=warmup - 1) if warmup > 1
             else lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=1))
    cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_ratio)
    sched = lr_scheduler.SequentialLR(opt, [first, cosine], milestones=[warmup])
    for step in range(total):
        assert f(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), step
        opt.step()
        sched.step()
    assert f(total) == pytest.approx(min_ratio) and f(10 * total) == pytest.approx(min_ratio)
    assert f(warmup - 1) == pytest.approx(1.0) and f(0) == pytest.approx(1 / warmup)


def test_param_groups_split(note):
    mod = note(OPT)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.GroupNorm(1, 3), nn.Flatten(), nn.Linear(12, 4),
                          nn.LayerNorm(4, bias=False), nn.Linear(4, 1, bias=False))
    model[0].weight.requires_grad_(False)                      # frozen: in neither group
    decay, no_decay = mod.param_groups(model, 0.3)
    ids = lambda ps: {id(p) for p in ps}                       # noqa: E731
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == ids([model[3].weight, model[5].weight])
    assert ids(no_decay["params"]) == ids([model[0].bias, model[1].weight, model[1].bias,
                                           model[3].bias, model[4].weight])
    torch.optim.AdamW(mod.param_groups(model, 0.3))             # a valid AdamW argument


@pytest.mark.parametrize("decoupled,cls", [(True, torch.optim.AdamW), (False, torch.optim.Adam)])
def test_adam_by_hand_matches_torch_in_float64(note, decoupled, cls):
    mod = note(OPT)
    X, y = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    p0 = torch.randn(5, dtype=torch.float64)
    p = p0.clone().requires_grad_(True)
    opt = cls([p], lr=0.05, weight_decay=0.2, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(6):
        opt.zero_grad()
        (0.5 * ((X @ p - y) ** 2).mean()).backward()
        opt.step()
    hand = mod.adam_by_hand(p0, lambda q: X.T @ (X @ q - y) / len(y), 6, 0.05, 0.2, decoupled,
                            betas=(0.8, 0.99), eps=1e-6)
    torch.testing.assert_close(hand, p.detach())


def test_01_writes_the_schedules_to_tensorboard(note, tmp_path):
    smoke(note(OPT), tmp_path)
    out = smoke(note(OPT), tmp_path)    # a rerun replaces the log: the curves appear once
    logs = merged(tmp_path)
    total = len(out["schedules"]["StepLR"])
    assert logs["scalars"] == {f"lr/{n}": list(range(total))
                               for n in ("StepLR", "Cosine", "OneCycle", "WarmupCos")}


def test_01_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note(OPT)
    right_adam, right_lambda = mod.adam_by_hand, mod.warmup_cosine_lambda
    right_cycle = mod.one_cycle_closed_form
    monkeypatch.setattr(mod, "adam_by_hand", lambda p, g, s, lr, wd, decoupled, **kw:
                        right_adam(p, g, s, lr, wd, not decoupled, **kw))     # decay mixed up
    with pytest.raises(ClaimError, match="AdamW: 3 steps by hand"):
        smoke(mod, tmp_path)
    monkeypatch.setattr(mod, "param_groups", lambda model, weight_decay: [
        {"params": list(model.parameters()), "weight_decay": weight_decay}, {"params": []}])
    with pytest.raises(ClaimError, match="biases and norm weights"):
        mod.step_2_param_groups(CPU)
    monkeypatch.setattr(mod, "one_cycle_closed_form",                         # off by one
                        lambda t, total, max_lr: right_cycle(t, total + 1, max_lr))
    with pytest.raises(ClaimError, match="OneCycle"):
        mod.step_3_and_4_schedules(20, 4, _NullWriter())
    monkeypatch.setattr(mod, "one_cycle_closed_form", right_cycle)
    monkeypatch.setattr(mod, "warmup_cosine_lambda", lambda w, t, min_ratio=0.0: (  # from 0
        lambda s: s / w if s < w else right_lambda(w, t, min_ratio)(s)))
    with pytest.raises(ClaimError, match="SequentialLR"):
        mod.step_3_and_4_schedules(20, 4, _NullWriter())
    monkeypatch.setattr(mod, "warmup_cosine_lambda", lambda w, t, min_ratio=0.0: (lambda s: 0.0))
    with pytest.raises(ClaimError, match="recipe trains"):
        mod.step_5_train_with_recipe(CPU, steps=40, warmup=4)


def test_01_scheduler_stepped_before_the_optimizer_is_caught(note, monkeypatch):
    """The note's lr_trace with the two calls swapped: every step applies the next step's rate.
    Once the trace read param_groups' lr at the top of the loop, and this swap passed."""
    mod = note(OPT)

    def swapped(make_sched, steps):
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([p], lr=mod.LR, momentum=0.9)
        sched, lrs = make_sched(opt), []
        for _ in range(steps - 1):                        # OneCycleLR allows `steps` steps
            p.grad = torch.ones_like(p)
            before = p.detach().clone()
            with warnings.catch_warnings():               # PyTorch warns about this order
                warnings.simplefilter("ignore", UserWarning)
                sched.step()                              # scheduler first: the mistake
            opt.step()
            lrs.append(((before - p.detach()) / opt.state[p]["momentum_buffer"]).item())
        return lrs + lrs[-1:]

    monkeypatch.setattr(mod, "lr_trace", swapped)
    with pytest.raises(ClaimError, match="StepLR follows its closed form"):
        mod.step_3_and_4_schedules(20, 4, _NullWriter())


class _NullWriter:
    def add_scalar(self, *args, **kwargs):
        pass


# ---------------------------------------------------------------------------------- 02 AMP

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_train_step_matches_a_manual_step(note, dtype):
    mod = note(AMP)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    twin = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = mod.train_step(model, x, y, opt, scaler, "cpu", dtype)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        ref = F.cross_entropy(twin(x), y)
    ref.backward()
    torch.nn.utils.clip_grad_norm_(twin.parameters(), 5.0)
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.1 * p.grad
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def test_train_step_with_an_enabled_scaler_unscales_before_the_step(note):
    mod = note(AMP)
    p = nn.Linear(4, 2)
    q = nn.Linear(4, 2)
    q.load_state_dict(p.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    mod.train_step(p, x, y, torch.optim.SGD(p.parameters(), lr=0.1), scaler, "cpu",
                   torch.float32)
    mod.train_step(q, x, y, torch.optim.SGD(q.parameters(), lr=0.1),
                   torch.amp.GradScaler("cpu", enabled=False), "cpu", torch.float32)
    for a, b in zip(p.parameters(), q.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_02_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note(AMP)
    monkeypatch.setitem(mod.LAYOUTS, torch.float16, (5, 11))             # wrong mantissa width
    with pytest.raises(ClaimError, match="float16: finfo"):
        smoke(mod, tmp_path)
    with pytest.raises(ClaimError, match="loss scaled by 1,"):
        mod.step_2_underflow_rescued(scale=1.0)
    with pytest.raises(ClaimError, match="loss scaled by 65536"):           # fp16 overflow
        mod.step_2_underflow_rescued(scale=2.0**16)
    real_autocast = torch.autocast                                # autocast that ignores dtype
    monkeypatch.setattr(torch, "autocast", lambda device_type, dtype=None, **kw:
                        real_autocast(device_type, dtype=torch.bfloat16, **kw))
    with pytest.raises(ClaimError, match="runs in torch.float16"):
        mod.step_4_autocast_dtypes(CPU, torch.float16)
    monkeypatch.setattr(torch, "autocast", real_autocast)

    def no_step(model, inputs, targets, optimizer, scaler, device_type, dtype):
        with torch.autocast(device_type=device_type, dtype=dtype,
                            enabled=dtype != torch.float32):
            return F.cross_entropy(model(inputs), targets).item()       # forgot backward/step

    monkeypatch.setattr(mod, "train_step", no_step)
    with pytest.raises(ClaimError, match="falls at least 3x"):
        mod.step_5_train(CPU, n_points=256, batch=64, steps=20)


def test_02_train_step_without_unscale_is_caught_on_cpu(note, monkeypatch):
    mod = note(AMP)

    def no_unscale(model, inputs, targets, optimizer, scaler, device_type, dtype):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device_type, dtype=dtype,
                            enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)   # clips S * grad
        scaler.step(optimizer)                                  # forgot unscale_ before the clip
        scaler.update()
        return loss.item()

    out = mod.step_5_train(CPU, **mod.SMOKE)                    # the note's own step passes
    assert out["scale"] > 1.0                    # the scaler was enabled on CPU (disabled: 1.0)
    monkeypatch.setattr(mod, "train_step", no_unscale)
    with pytest.raises(ClaimError, match="falls at least 3x"):
        mod.step_5_train(CPU, **mod.SMOKE)



# ------------------------------------------------------------------------ 03 checkpointing

def test_saved_activation_bytes_on_known_graphs(note):
    mod = note(CKPT)
    x = torch.randn(10, 20, requires_grad=True)                        # 800 bytes
    assert mod.saved_activation_bytes(lambda t: t.sin(), x) == 0        # saves the leaf only
    assert mod.saved_activation_bytes(lambda t: (t * 2).sin(), x) == 800
    assert mod.saved_activation_bytes(lambda t: (t * 2).exp(), x) == 800    # exp saves output
    assert mod.saved_activation_bytes(lambda t: (u := t * 2) * u, x) == 800   # one storage
    assert mod.saved_activation_bytes(lambda t: (t * 2).double().sin(), x) == 1600
    with torch.no_grad():
        assert mod.saved_activation_bytes(lambda t: (t * 2).sin(), x) == 0


def test_checkpointed_forward_matches_plain_for_every_segment_count(note):
    mod = note(CKPT)
    blocks = mod.make_blocks(8, 12, CPU)
    x = torch.randn(5, 12, requires_grad=True)
    ref = mod.plain_forward(blocks, x)
    for k in (1, 2, 4, 8):
        torch.testing.assert_close(mod.checkpointed_forward(blocks, x, k), ref, rtol=0, atol=0)


def test_estimated_peak_is_lowest_next_to_sqrt_2n(note):
    mod = note(CKPT)
    out = mod.step_2_and_4_saved_bytes(mod.make_blocks(16, 8, CPU),
                                       torch.randn(4, 8, requires_grad=True), 4)
    assert out["best"] == [4, 8]                            # sqrt(32) = 5.7 lies between: a tie
    divisors = [k for k in range(1, 19) if 18 % k == 0]     # sqrt(2 * 18) = 6 is a divisor
    assert min(divisors, key=lambda k: mod.estimated_peak(k, 18)) == 6


def test_03_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note(CKPT)
    right_fwd, right_bytes = mod.checkpointed_forward, mod.saved_activation_bytes
    blocks = mod.make_blocks(16, 8, CPU)
    x = torch.randn(4, 8, requires_grad=True)
    monkeypatch.setattr(mod, "checkpointed_forward", lambda b, t, k, use_reentrant=False:
                        right_fwd(b[:-1], t, k, use_reentrant))               # a block dropped
    with pytest.raises(ClaimError, match="outputs == plain"):
        smoke(mod, tmp_path)
    monkeypatch.setattr(mod, "checkpointed_forward", lambda b, t, k, use_reentrant=False:
                        mod.plain_forward(b, t))                              # no checkpoint
    with pytest.raises(ClaimError, match="k - 1 inner segment inputs"):
        mod.step_2_and_4_saved_bytes(blocks, x, 4)
    with pytest.raises(ClaimError, match="twice"):
        mod.step_3_recompute_cost(blocks, x, 4)
    monkeypatch.setattr(mod, "checkpointed_forward", lambda b, t, k, use_reentrant=False:
                        right_fwd(b, t, k, True))                             # always reentrant
    with pytest.raises(ClaimError, match="use_reentrant=False"):
        mod.step_5_why_not_reentrant(blocks, x)
    monkeypatch.setattr(mod, "checkpointed_forward", right_fwd)
    right_peak = mod.estimated_peak
    monkeypatch.setattr(mod, "estimated_peak", lambda k, n: (k - 1) + (n // k - 1))  # 1 per block
    with pytest.raises(ClaimError, match="2N/k - 1"):
        mod.step_2_and_4_saved_bytes(blocks, x, 4)
    monkeypatch.setattr(mod, "estimated_peak", right_peak)

    def counts_leaves(fn, *inputs):                                  # parameters counted too
        return right_bytes(fn, *inputs) + sum(p.numel() * 4 for p in blocks.parameters())

    monkeypatch.setattr(mod, "saved_activation_bytes", counts_leaves)
    with pytest.raises(ClaimError, match="2N - 1"):
        mod.step_2_and_4_saved_bytes(blocks, x, 4)
    assert math.isfinite(right_bytes(lambda t: t.exp(), x))
