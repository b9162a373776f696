"""training/: Moli, the shared loop, the accuracy bound, TensorBoard tags, checkpoints.

The smoke suite runs each note once; these tests pin the pieces and prove the claims can fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tb_events import merged
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchnotes import ClaimError, NoteError

CPU = torch.device("cpu")


@pytest.fixture
def train01(note):
    return note("training/01_train.py")


@pytest.fixture
def engine(train01):
    import model  # put on sys.path's cache by importing training/01_train.py

    return model


def _tiny_loader(n=96, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def test_moli_is_the_specs_network(engine):
    moli = engine.Moli()
    convs = [m for m in moli.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in moli.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (5, 5), (2, 2)), (32, 32, (5, 5), (2, 2)), (32, 64, (5, 5), (2, 2))]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 64), (64, 10)]
    assert not any(isinstance(m, (nn.ReLU, nn.Sigmoid)) for m in moli.modules())
    assert moli(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in moli.parameters()) == (
        3 * 32 * 25 + 32 + 32 * 32 * 25 + 32 + 32 * 64 * 25 + 64 + 1024 * 64 + 64 + 64 * 10 + 10)


def test_evaluate_matches_a_hand_computation(engine):
    torch.manual_seed(0)
    moli, loader = engine.Moli(), _tiny_loader()
    loss, acc = engine.evaluate(moli, loader, nn.CrossEntropyLoss(), CPU)
    x, y = loader.dataset.tensors
    with torch.no_grad():
        logits = moli.eval()(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == (logits.argmax(1) == y).sum().item() / len(y)
    assert not moli.training                                  # evaluate() left it in eval mode


def test_train_one_epoch_steps_and_callback(engine):
    torch.manual_seed(0)
    moli, seen = engine.Moli(), []
    opt = torch.optim.Adam(moli.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in moli.parameters()]
    losses = engine.train_one_epoch(moli, _tiny_loader(), nn.CrossEntropyLoss(), opt, CPU,
                                    max_steps=2, on_step=seen.append, show_progress=False)
    assert len(losses) == 2 and seen == losses and moli.training
    assert all(not torch.equal(a, b) for a, b in zip(before, moli.parameters(), strict=True))


def test_01_smoke_learns_logs_and_checkpoints(train01, tmp_path):
    (tmp_path / "moli_epoch_1.pth").write_text("an earlier run's file")   # --overwrite allows it
    old_events = tmp_path / "tensorboard" / "events.out.tfevents.0.earlier-run"
    old_events.parent.mkdir()
    old_events.write_bytes(b"")
    out = train01.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path), "--overwrite"])
    assert not old_events.exists()                           # one run's curves, not two
    assert out["test_accuracy"] >= 0.30                      # chance: 0.10
    assert out["reloaded_accuracy"] == out["test_accuracy"]
    assert [e["checkpoint"].name for e in out["epochs"]] == ["moli_epoch_1.pth",
                                                             "moli_epoch_2.pth"]
    state = torch.load(tmp_path / "moli_epoch_1.pth", map_location=CPU)
    assert set(state) == set(train01.Moli().state_dict())
    tb = merged(out["tensorboard"])["scalars"]
    assert tb["train/loss"] == list(range(len(out["losses"])))
    assert tb["test/loss"] == tb["test/accuracy"] == [1, 2]


def test_01_refuses_an_earlier_runs_checkpoint(train01, tmp_path):
    (tmp_path / "moli_epoch_2.pth").write_text("an earlier run's file")
    with pytest.raises(NoteError, match="moli_epoch_2.pth already exists"):
        train01.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert (tmp_path / "moli_epoch_2.pth").read_text() == "an earlier run's file"
    assert not (tmp_path / "tensorboard").exists()           # refused before training


def test_01_refuses_an_earlier_runs_tensorboard_log(train01, tmp_path):
    old_events = tmp_path / "tensorboard" / "events.out.tfevents.0.earlier-run"
    old_events.parent.mkdir()
    old_events.write_bytes(b"")
    with pytest.raises(NoteError, match="events.out.tfevents.0.earlier-run already exists"):
        train01.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert old_events.exists()


def test_claim_fails_below_the_accuracy_bound(train01):
    history = {"epochs": [{"test_accuracy": 0.12}]}
    with pytest.raises(ClaimError, match="final test accuracy >= 30%"):
        train01.step_2_accuracy_above_chance(history, 0.30)


def test_claim_fails_when_the_checkpoint_is_not_the_model(train01, engine, tmp_path):
    torch.manual_seed(0)
    trained, other = engine.Moli(), engine.Moli()
    torch.save(other.state_dict(), tmp_path / "ckpt.pth")
    history = {"epochs": [{"checkpoint": tmp_path / "ckpt.pth", "test_accuracy": 0.5}]}
    with pytest.raises(ClaimError, match="holds exactly the trained tensors"):
        train01.step_3_checkpoint_round_trip(trained, history, _tiny_loader(), CPU)


def test_02_claim_fails_when_nothing_is_learned(note, engine):
    mod = note("training/02_train_gpu_cuda.py")
    moli, loss_fn = mod.step_1_move_with_cuda(use_cuda=False)
    cfg = dict(epochs=1, lr=0.0)                              # lr 0: the loss cannot go down
    with pytest.raises(ClaimError, match="the training loss went down"):
        mod.step_2_train_timed(moli, loss_fn, (_tiny_loader(n=256), _tiny_loader()), False, cfg,
                               show_progress=False)


def test_03_same_seed_same_losses_other_seed_other_losses(note, engine):
    mod = note("training/03_train_gpu_device.py")
    batches = list(_tiny_loader(n=64))
    a = mod.first_losses(batches, CPU, seed=0, lr=1e-3)
    assert a == mod.first_losses(batches, CPU, seed=0, lr=1e-3)
    assert a != mod.first_losses(batches, CPU, seed=1, lr=1e-3)
    with pytest.raises(ClaimError, match="agree on the first"):
        mod.step_2_device_matches_cpu(batches, [v + 0.1 for v in a], CPU, seed=0, lr=1e-3)


def test_03_on_the_cpu_compares_float32_with_float64(note, engine, capsys):
    mod = note("training/03_train_gpu_device.py")
    batches = list(_tiny_loader(n=64))
    a = mod.first_losses(batches, CPU, seed=0, lr=1e-3)
    b = mod.first_losses(batches, CPU, seed=0, lr=1e-3, dtype=torch.float64)
    assert a != b                                           # really another computation
    err = mod.step_2_device_matches_cpu(batches, a, CPU, seed=0, lr=1e-3)
    assert 0 < err < mod.CROSS_DEVICE_RTOL * max(b)
    assert "float32 and float64 on the CPU agree" in capsys.readouterr().out


def test_02_says_it_cannot_use_mps(note, engine, capsys):
    mod = note("training/02_train_gpu_cuda.py")
    moli, _ = mod.step_1_move_with_cuda(use_cuda=False, selected=torch.device("mps"))
    out = capsys.readouterr().out
    assert "cannot use MPS" in out and "trains on the CPU" in out
    assert "03_train_gpu_device.py runs on MPS" in out
    assert {p.device.type for p in moli.parameters()} == {"cpu"}
