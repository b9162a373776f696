"""Unit tests for nn_modules/: the hand implementations against torch, TensorBoard output read
back, and proof that the scripts' claims really can fail."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from tb_events import merged
from torch import nn

from torchnotes import ClaimError

DEV = torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Hand implementations == torch, on random inputs
# ---------------------------------------------------------------------------------------------

def test_maxpool_by_hand_and_size_formula_match_torch(note):
    mod = note("nn_modules/03_nn_maxpool.py")
    g = torch.Generator().manual_seed(0)
    for h, w, k, s, p, ceil in itertools.product((7, 10), (5, 12), (2, 3, 4), (1, 2, 3),
                                                 (0, 1, 2), (False, True)):
        if p > k // 2 or min(h, w) + 2 * p < k:           # torch rejects these settings
            continue
        x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)
        ref = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
        assert ref.shape[-2:] == (mod.pool_out_size(h, k, s, p, ceil),
                                  mod.pool_out_size(w, k, s, p, ceil)), (h, w, k, s, p, ceil)
        torch.testing.assert_close(mod.maxpool2d_by_hand(x, k, s, p, ceil), ref, rtol=0, atol=0)


def test_conv_by_hand_and_size_formula_match_torch(note):
    mod = note("nn_modules/04_nn_conv.py")
    g = torch.Generator().manual_seed(1)
    for k, s, p, bias in itertools.product((1, 3, 4), (1, 2), (0, 1, 2), (True, False)):
        x = torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64)
        w = torch.randn(5, 3, k, k, generator=g, dtype=torch.float64)
        b = torch.randn(5, generator=g, dtype=torch.float64) if bias else None
        ref = F.conv2d(x, w, b, stride=s, padding=p)
        assert ref.shape[-2:] == (mod.conv_out_size(9, k, s, p), mod.conv_out_size(7, k, s, p))
        torch.testing.assert_close(mod.conv2d_sliding(x, w, b, s, p), ref)
        torch.testing.assert_close(mod.conv2d_unfold(x, w, b, s, p), ref)
        ref_d = F.conv2d(x, w, b, stride=s, padding=p, dilation=2)
        if min(ref_d.shape[-2:]) > 0:
            torch.testing.assert_close(mod.conv2d_unfold(x, w, b, s, p, dilation=2), ref_d)


def test_losses_by_hand_match_torch(note):
    mod = note("nn_modules/08_nn_loss.py")
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g,
                                                                           dtype=torch.float64)
    z = 4 * torch.randn(12, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (12,), generator=g)
    probs = torch.softmax(torch.randn(12, 7, generator=g, dtype=torch.float64), dim=1)
    w = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    for r in ("mean", "sum", "none"):
        torch.testing.assert_close(mod.l1_by_hand(x, y, r), F.l1_loss(x, y, reduction=r))
        torch.testing.assert_close(mod.mse_by_hand(x, y, r), F.mse_loss(x, y, reduction=r))
        for target, weight, eps in itertools.product((ids, probs), (None, w), (0.0, 0.2)):
            torch.testing.assert_close(
                mod.cross_entropy_by_hand(z, target, r, weight=weight, label_smoothing=eps),
                F.cross_entropy(z, target, weight=weight, reduction=r, label_smoothing=eps))
    torch.testing.assert_close(mod.log_softmax_by_hand(1000 * z), F.log_softmax(1000 * z, 1))
    with pytest.raises(ValueError, match="reduction"):
        mod.apply_reduction(x, "average")


def test_common_layers_by_hand_match_torch(note):
    mod = note("nn_modules/11_nn_common_layers.py")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 11, 9, generator=g, dtype=torch.float64)
    for k, s in ((2, 2), (3, 2), (3, 1)):
        torch.testing.assert_close(mod.avgpool_by_hand(x, k, s), F.avg_pool2d(x, k, s))
    mean, var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    gamma, beta = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(mod.batchnorm_by_hand(x, mean, var, gamma, beta, 1e-5),
                               F.batch_norm(x, mean, var, gamma, beta, training=False, eps=1e-5))


def test_shape_formulas_of_07_match_real_layers(note):
    mod = note("nn_modules/07_nn_seq.py")
    layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(3, stride=2),
              nn.Conv2d(8, 4, 5), nn.Flatten(), nn.Linear(36, 6)]   # 4 * 3 * 3 = 36
    shape, x = (2, 3, 29, 29), torch.randn(2, 3, 29, 29)
    for layer in layers:
        shape, x = mod.shape_after(layer, shape), layer(x)
        assert shape == tuple(x.shape), layer
        assert mod.param_formula(layer) == sum(p.numel() for p in layer.parameters())
    with pytest.raises(TypeError, match="no shape formula"):
        mod.shape_after(nn.ReLU(), shape)


# ---------------------------------------------------------------------------------------------
# The visualising scripts write what TensorBoard shows
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script, images, graph, png", [
    ("02_nn_relu.py", {"input", "sigmoid", "relu_of_centred"}, False, "relu_sigmoid_grid.png"),
    ("03_nn_maxpool.py", {"input", "maxpool_ceil"}, False, "maxpool_grid.png"),
    ("05_nn_conv2d.py", {"input", "output"}, False, "conv2d_grid.png"),
    ("07_nn_seq.py", set(), True, None),
])
def test_tensorboard_events_hold_the_expected_tags(note, tmp_path, capsys, script, images,
                                                   graph, png):
    mod = note(f"nn_modules/{script}")
    mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    events = merged(tmp_path / "tb")
    assert set(events["images"]) == images
    assert all(steps == [0] for steps in events["images"].values())
    assert events["graph"] is graph
    if png:
        assert (tmp_path / png).stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Each claim can really fail
# ---------------------------------------------------------------------------------------------

def test_01_registration_claim_fails_when_plain_tensor_is_registered(note):
    mod = note("nn_modules/01_nn_module.py")
    model = mod.Moli(4)
    model.plain = nn.Parameter(model.plain)                 # now it IS registered
    with pytest.raises(ClaimError, match="parameters"):
        mod.step_3_registration(model)


def test_02_sigmoid_claim_fails_for_another_function(note, monkeypatch):
    mod = note("nn_modules/02_nn_relu.py")
    monkeypatch.setattr(mod.nn, "Sigmoid", nn.Tanh)         # restored after the test
    with pytest.raises(ClaimError, match="Sigmoid"):
        mod.step_2_sigmoid_formula(DEV)


def test_02_zeroed_pixels_claim_checks_positions_not_counts(note, monkeypatch):
    mod = note("nn_modules/02_nn_relu.py")
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mod.step_4_on_images(images)                            # the real ReLU: holds
    real = nn.ReLU

    class MirroredReLU(nn.Module):    # zeroes as many values as ReLU, at mirrored positions
        def forward(self, t):
            out = real()(t)
            return out.flip(-1) if bool((t < 0).any()) else out

    monkeypatch.setattr(mod.nn, "ReLU", MirroredReLU)
    with pytest.raises(ClaimError, match="exactly the pixels"):
        mod.step_4_on_images(images)


def test_03_spec_claim_fails_for_other_expected_values(note, monkeypatch):
    mod = note("nn_modules/03_nn_maxpool.py")
    monkeypatch.setattr(mod, "SPEC_POOLED", {False: [[3]], True: [[2, 3], [5, 1]]})
    with pytest.raises(ClaimError, match="spec's"):
        mod.step_1_spec_example(DEV)


def test_03_size_claim_fails_with_floor_only_formula(note, monkeypatch):
    mod = note("nn_modules/03_nn_maxpool.py")
    floor_only = mod.pool_out_size
    monkeypatch.setattr(mod, "pool_out_size", lambda n, k, s, p=0, ceil_mode=False:
                        floor_only(n, k, s, p, False))
    with pytest.raises(ClaimError, match="output size"):
        mod.step_2_output_size_formula(DEV)


def test_08_mse_claim_fails_with_wrong_formula(note, monkeypatch):
    mod = note("nn_modules/08_nn_loss.py")
    monkeypatch.setattr(mod, "mse_by_hand", mod.l1_by_hand)  # |x - y| instead of (x - y)^2
    with pytest.raises(ClaimError, match="MSELoss"):
        mod.step_1_l1_and_mse(DEV, batch=4)


def test_09_logit_gradient_claim_fails_for_other_labels(note):
    mod = note("nn_modules/09_nn_loss_network.py")
    torch.manual_seed(0)
    z = torch.randn(4, 10, requires_grad=True)
    labels = torch.tensor([1, 2, 3, 4])
    z.retain_grad()
    F.cross_entropy(z, labels).backward()
    mod.step_3_logit_gradient(z, labels)                    # the true labels: holds
    with pytest.raises(ClaimError, match="logits"):
        mod.step_3_logit_gradient(z, (labels + 1) % 10)


def test_10_loss_falls_claim_fails_with_zero_learning_rate(note):
    mod = note("nn_modules/10_nn_optim.py")
    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    losses = mod.train(images, labels, seed=0, rounds=3, batch=4, lr=0.0)
    assert losses[0] == losses[-1]                          # lr 0: nothing moves
    with pytest.raises(ClaimError, match="loss fell"):
        mod.step_2_loss_falls(losses)


def test_11_dropout_claim_fails_for_the_wrong_rate(note, monkeypatch):
    mod = note("nn_modules/11_nn_common_layers.py")
    real = nn.Dropout
    monkeypatch.setattr(mod.nn, "Dropout", lambda p: real(p / 2))   # drops half as often
    with pytest.raises(ClaimError, match="fraction zeroed"):
        mod.step_3_dropout(DEV, dropout_units=20_000)
