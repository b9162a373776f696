"""Unit tests for nn_modules/: the hand implementations against torch, TensorBoard output read
back, and proof that every family of claims the scripts make really can fail."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from tb_events import merged
from torch import nn
from torch.utils.data import TensorDataset

from torchnotes import ClaimError

DEV = torch.device("cpu")


def batches(*sizes: int, side: int = 32, seed: int = 0) -> list:
    """A stand-in loader: a list of (images in [0, 1], labels) batches of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g))
            for n in sizes]


def tiny_dataset(n: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10)


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


def test_shape_formula_of_07_matches_real_layers(note):
    mod = note("nn_modules/07_nn_seq.py")
    layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(3, stride=2),
              nn.Conv2d(8, 4, 5), nn.Flatten(), nn.Linear(36, 6)]   # 4 * 3 * 3 = 36
    shape, x = (2, 3, 29, 29), torch.randn(2, 3, 29, 29)
    for layer in layers:
        shape, x = mod.shape_after(layer, shape), layer(x)
        assert shape == tuple(x.shape), layer
    with pytest.raises(TypeError, match="no shape formula"):
        mod.shape_after(nn.ReLU(), shape)


def test_10_loss_nodes_counts_each_step_once(note):
    mod = note("nn_modules/10_nn_optim.py")
    w = torch.randn(3, requires_grad=True)
    total = 0.0
    for k in range(4):
        total = total + F.cross_entropy(w[None] * (k + 1), torch.tensor([0]))
    assert mod.loss_nodes(total) == 4
    assert mod.loss_nodes(total.detach()) == 0 and mod.loss_nodes(2.5) == 0


# ---------------------------------------------------------------------------------------------
# The real-data branch: the notes' own CIFAR10(...) call, with a recording fake (no download)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script, train", [
    ("02_nn_relu.py", False), ("03_nn_maxpool.py", False), ("05_nn_conv2d.py", False),
    ("06_nn_linear.py", False), ("07_nn_seq.py", False), ("09_nn_loss_network.py", False),
    ("10_nn_optim.py", True),
])
def test_real_branch_calls_torchvision_cifar10(note, tmp_path, capsys, monkeypatch, script,
                                               train):
    from torchnotes.datasets import SyntheticCIFAR10

    mod = note(f"nn_modules/{script}")
    calls = []

    def fake_cifar10(root, train, transform, download):     # the real signature's keywords
        calls.append((root, train, download))
        return SyntheticCIFAR10(train=train, transform=transform, size=80)   # 64 + 16

    monkeypatch.setattr(mod, "use_real", lambda args, name: True)
    monkeypatch.setattr(mod.torchvision.datasets, "CIFAR10", fake_cifar10)
    mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path),
              "--data-root", str(tmp_path / "data")])
    assert calls and all(c == (tmp_path / "data", train, False) for c in calls), calls


# ---------------------------------------------------------------------------------------------
# The visualising scripts write what TensorBoard shows: one image set per loader step
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script, tags", [
    ("02_nn_relu.py", {"input", "sigmoid", "relu_of_centred"}),
    ("03_nn_maxpool.py", {"input", "maxpool_ceil"}),
    ("05_nn_conv2d.py", {"input", "output"}),
])
def test_tensorboard_holds_one_image_set_per_loader_step(note, tmp_path, capsys, script, tags):
    mod = note(f"nn_modules/{script}")
    result = mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    events = merged(tmp_path / "tb")
    assert set(events["images"]) == tags
    steps = list(range(mod.SMOKE["max_steps"]))
    assert result["steps"] == len(steps)
    assert all(sorted(s) == steps for s in events["images"].values()), events["images"]


def test_07_graph_in_the_event_file_has_every_layer(note, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.graph_pb2 import GraphDef

    mod = note("nn_modules/07_nn_seq.py")
    mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    (event_file,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    ops: Counter = Counter()
    for event in EventFileLoader(str(event_file)).Load():      # TensorBoard's own reader
        if event.HasField("graph_def"):
            ops.update(node.op for node in GraphDef.FromString(event.graph_def).node)
    layers = [ops[op] for op in ("aten::_convolution", "aten::max_pool2d", "aten::flatten",
                                 "aten::linear")]
    assert layers == [3, 3, 1, 2], ops


# ---------------------------------------------------------------------------------------------
# Each claim family can really fail: break the lesson code, expect ClaimError
# ---------------------------------------------------------------------------------------------

# 01 ------------------------------------------------------------------------------------------

def test_01_forward_claim_fails_when_the_plus_one_is_missing(note, monkeypatch):
    mod = note("nn_modules/01_nn_module.py")
    monkeypatch.setattr(mod.Moli, "forward", lambda self, x: x * self.scale)
    with pytest.raises(ClaimError, match="worked by hand"):
        mod.step_1_call_runs_forward(mod.Moli(4))


def test_01_hook_claims_fail_when_call_skips_or_forward_runs_hooks(note):
    mod = note("nn_modules/01_nn_module.py")
    x = torch.randn(2, 4)

    class CallSkipsHooks(mod.Moli):
        __call__ = mod.Moli.forward                     # model(x) no longer goes through hooks

    with pytest.raises(ClaimError, match="hook once"):
        mod.step_2_hooks_run_only_through_call(CallSkipsHooks(4), x)

    class ForwardRunsHooks(mod.Moli):
        def forward(self, x):
            out = super().forward(x)
            if not getattr(self, "_inside", False):     # only when called as .forward(x)
                for hook in self._forward_hooks.values():
                    hook(self, (x,), out)
            return out

        def __call__(self, x):
            self._inside = True
            try:
                return super().__call__(x)
            finally:
                self._inside = False

    with pytest.raises(ClaimError, match="skipped the hook"):
        mod.step_2_hooks_run_only_through_call(ForwardRunsHooks(4), x)


def test_01_registration_claim_fails_when_plain_tensor_is_registered(note):
    mod = note("nn_modules/01_nn_module.py")
    model = mod.Moli(4)
    model.plain = nn.Parameter(model.plain)                 # now it IS registered
    with pytest.raises(ClaimError, match="parameters"):
        mod.step_3_registration(model)


def test_01_conversion_claim_fails_when_plain_tensor_is_a_buffer(note):
    mod = note("nn_modules/01_nn_module.py")
    model = mod.Moli(4)
    plain = model.plain
    del model.plain
    model.register_buffer("plain", plain)                   # .half() now converts it
    with pytest.raises(ClaimError, match="stayed float32"):
        mod.step_4_conversion_skips_plain(model)


def test_01_state_dict_and_half_claims_fail_for_other_registrations(note):
    mod = note("nn_modules/01_nn_module.py")
    model = mod.Moli(4)
    calls = model.calls
    del model.calls
    model.register_buffer("calls", calls, persistent=False)   # a buffer left out of state_dict
    with pytest.raises(ClaimError, match="state_dict"):
        mod.step_3_registration(model)
    model = mod.Moli(4)
    scale = model.scale.detach().clone()
    del model.scale
    model.scale = scale                                     # a plain tensor: .half() skips it
    with pytest.raises(ClaimError, match="became float16"):
        mod.step_4_conversion_skips_plain(model)


# 02 ------------------------------------------------------------------------------------------

def test_02_relu_claim_fails_for_leaky_relu(note):
    mod = note("nn_modules/02_nn_relu.py")
    moli = mod.Moli()
    moli.relu1 = nn.LeakyReLU(0.1)
    with pytest.raises(ClaimError, match="worked by hand"):
        mod.step_1_relu_is_max_with_zero(moli, DEV)


def test_02_sigmoid_and_no_parameter_claims_fail(note):
    mod = note("nn_modules/02_nn_relu.py")
    moli = mod.Moli()
    moli.sigmoid1 = nn.Tanh()
    with pytest.raises(ClaimError, match="Sigmoid"):
        mod.step_2_sigmoid_formula(moli, DEV)
    moli = mod.Moli()
    moli.relu1 = nn.PReLU()                                 # an activation with a parameter
    with pytest.raises(ClaimError, match="no parameters"):
        mod.step_2_sigmoid_formula(moli, DEV)


def test_02_inplace_claims_fail_when_inplace_is_ignored_or_forced(note, monkeypatch):
    mod = note("nn_modules/02_nn_relu.py")
    real = nn.ReLU
    monkeypatch.setattr(mod.nn, "ReLU", lambda inplace=False: real(inplace=False))
    with pytest.raises(ClaimError, match="storage"):
        mod.step_3_inplace_shares_storage(DEV)
    monkeypatch.setattr(mod.nn, "ReLU", lambda inplace=False: real(inplace=True))
    with pytest.raises(ClaimError, match="input is unchanged"):
        mod.step_3_inplace_shares_storage(DEV)


@pytest.mark.parametrize("layer, wrong, match", [
    ("relu1", nn.Hardtanh(0.0, 0.9), "exactly unchanged"),   # clips bright pixels
    ("sigmoid1", nn.Tanh(), "0.731"),
])
def test_02_loader_claims_fail_for_other_activations(note, tmp_path, layer, wrong, match):
    mod = note("nn_modules/02_nn_relu.py")
    moli = mod.Moli()
    setattr(moli, layer, wrong)
    with pytest.raises(ClaimError, match=match):
        mod.step_4_over_the_loader(moli, batches(2, 2, side=8), DEV, 5, tmp_path)


def test_02_zeroed_pixels_claim_checks_positions_not_counts(note, tmp_path):
    mod = note("nn_modules/02_nn_relu.py")
    loader = batches(2, side=8)
    mod.step_4_over_the_loader(mod.Moli(), loader, DEV, 5, tmp_path / "ok")   # holds

    class MirroredReLU(nn.Module):    # zeroes as many values as ReLU, at mirrored positions
        def forward(self, t):
            out = t.clamp_min(0)
            return out.flip(-1) if bool((t < 0).any()) else out

    moli = mod.Moli()
    moli.relu1 = MirroredReLU()
    with pytest.raises(ClaimError, match="exactly the pixels"):
        mod.step_4_over_the_loader(moli, loader, DEV, 5, tmp_path / "bad")


# 03 ------------------------------------------------------------------------------------------

def test_03_worked_example_claim_fails_for_other_values(note, monkeypatch):
    mod = note("nn_modules/03_nn_maxpool.py")
    monkeypatch.setattr(mod, "POOLED_BY_HAND", {False: [[3]], True: [[2, 3], [5, 1]]})
    with pytest.raises(ClaimError, match="worked by hand"):
        mod.step_1_worked_example(DEV)


def test_03_size_claim_fails_with_floor_only_formula(note, monkeypatch):
    mod = note("nn_modules/03_nn_maxpool.py")
    floor_only = mod.pool_out_size
    monkeypatch.setattr(mod, "pool_out_size", lambda n, k, s, p=0, ceil_mode=False:
                        floor_only(n, k, s, p, False))
    with pytest.raises(ClaimError, match="output size"):
        mod.step_2_output_size_formula(DEV)


def test_03_hand_claim_fails_for_average_pooling(note, monkeypatch):
    mod = note("nn_modules/03_nn_maxpool.py")
    monkeypatch.setattr(mod, "maxpool2d_by_hand", lambda x, k, s=None, p=0, ceil_mode=False:
                        F.avg_pool2d(x, k, s, p, ceil_mode=ceil_mode))
    with pytest.raises(ClaimError, match="unfold hand version"):
        mod.step_3_hand_equals_torch(DEV, 2)


@pytest.mark.parametrize("layer, match", [
    (nn.MaxPool2d(3), "with ceil_mode"),                       # floor mode: 10x10
    (nn.AvgPool2d(3, ceil_mode=True), "pixel of its own image"),   # right size, blends
])
def test_03_loader_claims_fail_for_other_pooling(note, tmp_path, layer, match):
    mod = note("nn_modules/03_nn_maxpool.py")
    moli = mod.Moli()
    moli.maxpool1 = layer
    with pytest.raises(ClaimError, match=match):
        mod.step_4_over_the_loader(moli, batches(2, 2), DEV, 5, tmp_path)


# 04 ------------------------------------------------------------------------------------------

def test_04_worked_example_claim_fails_for_other_values(note, monkeypatch):
    mod = note("nn_modules/04_nn_conv.py")
    monkeypatch.setattr(mod, "EXAMPLE_OUTPUT", [[10, 12, 12], [18, 16, 16], [13, 9, 4]])
    with pytest.raises(ClaimError, match="worked out by hand"):
        mod.step_1_worked_example(DEV)


def test_04_sliding_claim_fails_for_a_flipped_kernel(note, monkeypatch):
    mod = note("nn_modules/04_nn_conv.py")
    real = mod.conv2d_sliding                     # true convolution flips; PyTorch does not
    monkeypatch.setattr(mod, "conv2d_sliding", lambda x, w, b=None, stride=1, padding=0:
                        real(x, w.flip(-1, -2), b, stride, padding))
    with pytest.raises(ClaimError, match="sliding window"):
        mod.step_1_worked_example(DEV)


def test_04_unfold_claim_fails_without_the_bias(note, monkeypatch):
    mod = note("nn_modules/04_nn_conv.py")
    real = mod.conv2d_unfold
    monkeypatch.setattr(mod, "conv2d_unfold", lambda x, w, b=None, s=1, p=0, d=1:
                        real(x, w, None, s, p, d))
    with pytest.raises(ClaimError, match="unfold"):
        mod.step_2_random_batches(DEV, **mod.SMOKE)


def test_04_size_claim_fails_when_dilation_is_ignored(note, monkeypatch):
    mod = note("nn_modules/04_nn_conv.py")
    real = mod.conv_out_size
    monkeypatch.setattr(mod, "conv_out_size", lambda n, k, stride=1, padding=0, dilation=1:
                        real(n, k, stride, padding, 1))
    with pytest.raises(ClaimError, match="output size"):
        mod.step_3_output_size_formula(DEV)


# 05 ------------------------------------------------------------------------------------------

def test_05_print_claim_fails_for_another_layer(note):
    mod = note("nn_modules/05_nn_conv2d.py")
    moli = mod.Moli()
    moli.conv1 = nn.Conv2d(3, 6, 3, padding=1)
    with pytest.raises(ClaimError, match="print"):
        mod.step_1_print_model(moli)


class Shifted(nn.Conv2d):                                   # adds a constant to every pixel
    def forward(self, x):
        return super().forward(x) + 0.01


class PadsBottomRight(nn.Conv2d):                           # all 2p zeros after the image
    def forward(self, x):
        p = self.padding[0]
        return F.conv2d(F.pad(x, (0, 2 * p, 0, 2 * p)), self.weight, self.bias, self.stride)


class FlipsKernel(nn.Conv2d):                               # textbook convolution, not PyTorch's
    def forward(self, x):
        return F.conv2d(x, self.weight.flip(-1, -2), self.bias, self.stride, self.padding)


class IgnoresStride(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, 1, self.padding)


@pytest.mark.parametrize("layer, match", [
    (Shifted(3, 6, 3), "by hand"),
    (PadsBottomRight(3, 6, 3, stride=2, padding=1), "by hand"),   # right size, shifted values
    (FlipsKernel(3, 6, 3, stride=2, padding=1), "by hand"),
    (IgnoresStride(3, 6, 3, stride=2, padding=1), "floor"),       # 32 wide, not 16
])
def test_05_window_claims_fail_for_wrong_layers(note, layer, match):
    mod = note("nn_modules/05_nn_conv2d.py")
    images = torch.rand(2, 3, 32, 32)
    mod.step_2_window_by_hand(nn.Conv2d(3, 6, 3, stride=2, padding=1), images)   # holds
    with pytest.raises(ClaimError, match=match):
        mod.step_2_window_by_hand(layer, images)


@pytest.mark.parametrize("conv, match", [
    (nn.Conv2d(3, 6, 5), "weight shape"),
    (nn.Conv2d(3, 6, 3, bias=False), "parameter count"),
])
def test_05_parameter_claims_fail_for_other_layers(note, conv, match):
    mod = note("nn_modules/05_nn_conv2d.py")
    with pytest.raises(ClaimError, match=match):
        mod.step_3_parameters(conv)


def test_05_init_claim_fails_for_larger_weights(note):
    mod = note("nn_modules/05_nn_conv2d.py")
    conv = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        conv.weight.mul_(3)
    with pytest.raises(ClaimError, match="default init"):
        mod.step_3_parameters(conv)


def test_05_loader_claims_fail(note, monkeypatch, tmp_path):
    mod = note("nn_modules/05_nn_conv2d.py")
    moli = mod.Moli()
    moli.conv1 = nn.Conv2d(3, 6, 3, padding=1)                 # keeps 32x32
    with pytest.raises(ClaimError, match="30, 30"):
        mod.step_4_over_the_loader(moli, batches(2), DEV, 5, tmp_path / "a")
    monkeypatch.setattr(mod, "to_pictures",                  # interleaves the channels
                        lambda out: out.transpose(0, 1).reshape(-1, 3, *out.shape[-2:]))
    with pytest.raises(ClaimError, match="picture 2i"):
        mod.step_4_over_the_loader(mod.Moli(), batches(2), DEV, 5, tmp_path / "b")


# 06 ------------------------------------------------------------------------------------------

def test_06_failure_claims_fail_without_a_short_last_batch(note):
    mod = note("nn_modules/06_nn_linear.py")
    with pytest.raises(ClaimError, match="no RuntimeError"):    # every batch full: no failure
        mod.step_1_last_batch_breaks(batches(4, 4), DEV, 4)
    with pytest.raises(ClaimError, match="after every full one"):   # the FIRST batch is short
        mod.step_1_last_batch_breaks(batches(2, 4, 4), DEV, 4)


def test_06_drop_last_claim_fails_when_drop_last_is_ignored(note, monkeypatch):
    mod = note("nn_modules/06_nn_linear.py")
    real = mod.DataLoader
    monkeypatch.setattr(mod, "DataLoader", lambda ds, batch_size, drop_last=False:
                        real(ds, batch_size=batch_size))
    with pytest.raises(ClaimError, match="drop_last"):
        mod.step_2_drop_last(tiny_dataset(6), DEV, 4)


def test_06_flatten_claim_fails_for_the_wrong_output_size(note):
    mod = note("nn_modules/06_nn_linear.py")
    with pytest.raises(ClaimError, match="short one included"):
        mod.step_3_flatten_keeps_batch(batches(4, 2), nn.Linear(3072, 5), DEV)


def test_06_linear_claims_fail(note):
    mod = note("nn_modules/06_nn_linear.py")
    imgs = torch.rand(3, 3, 32, 32)
    with pytest.raises(ClaimError, match="parameter count"):
        mod.step_4_linear_formula(nn.Linear(3072, 10, bias=False), imgs)

    class Shifted(nn.Linear):
        def forward(self, x):
            return super().forward(x) + 0.01

    with pytest.raises(ClaimError, match="W.T"):
        mod.step_4_linear_formula(Shifted(3072, 10), imgs)


# 07 ------------------------------------------------------------------------------------------

def test_07_shape_claim_fails_when_padding_is_ignored(note, monkeypatch):
    mod = note("nn_modules/07_nn_seq.py")
    real = mod.shape_after

    def no_padding(layer, shape):
        if isinstance(layer, nn.Conv2d):
            n, _, h, w = shape
            k = layer.kernel_size[0]
            return (n, layer.out_channels, h - k + 1, w - k + 1)
        return real(layer, shape)

    monkeypatch.setattr(mod, "shape_after", no_padding)
    with torch.no_grad(), pytest.raises(ClaimError, match="formula shape"):
        mod.step_1_shape_table(mod.Moli(), torch.rand(2, 3, 32, 32))


def test_07_equal_outputs_claim_fails_when_forward_differs(note):
    mod = note("nn_modules/07_nn_seq.py")

    class ExtraReLU(mod.MoliExplicit):                      # a layer the Sequential lacks
        def forward(self, x):
            x = self.maxpool1(self.conv1(x)).relu()
            x = self.maxpool2(self.conv2(x))
            x = self.maxpool3(self.conv3(x))
            return self.linear2(self.linear1(self.flatten(x)))

    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        mod.step_2_explicit_equals_sequential(mod.MoliExplicit(), mod.Moli(), x)   # holds
        with pytest.raises(ClaimError, match="Sequential"):
            mod.step_2_explicit_equals_sequential(ExtraReLU(), mod.Moli(), x)


def test_07_output_and_parameter_claims_fail_for_another_head(note):
    mod = note("nn_modules/07_nn_seq.py")
    model = mod.Moli()
    model.model1[8] = nn.Linear(64, 5)                      # 5 classes, 325 parameters
    with torch.no_grad(), pytest.raises(ClaimError, match=r"\(B, 10\)"):
        mod.step_3_output_shapes(model, batches(2, 1), DEV, 2, 5)
    with pytest.raises(ClaimError, match="145,578"):
        mod.step_4_parameter_count(model)


# 08 ------------------------------------------------------------------------------------------

def test_08_worked_examples_fail_for_the_wrong_loss(note, monkeypatch):
    mod = note("nn_modules/08_nn_loss.py")
    monkeypatch.setattr(mod.nn, "L1Loss", nn.MSELoss)
    with pytest.raises(ClaimError, match="by hand"):
        mod.step_1_l1_and_mse(DEV, batch=4)


def test_08_ce_example_fails_on_probabilities_instead_of_scores(note, monkeypatch):
    mod = note("nn_modules/08_nn_loss.py")
    real = nn.CrossEntropyLoss

    def on_probabilities(**kw):                             # the classic softmax-twice bug
        return lambda z, y: real(**kw)(z.softmax(dim=1), y)

    monkeypatch.setattr(mod.nn, "CrossEntropyLoss", on_probabilities)
    with pytest.raises(ClaimError, match="1.101943"):
        mod.step_2_cross_entropy_indices(DEV, batch=4, classes=5)


def test_08_formula_claims_fail_with_wrong_hand_formulas(note, monkeypatch):
    mod = note("nn_modules/08_nn_loss.py")
    monkeypatch.setattr(mod, "mse_by_hand", mod.l1_by_hand)  # |x - y| instead of (x - y)^2
    with pytest.raises(ClaimError, match="MSELoss"):
        mod.step_1_l1_and_mse(DEV, batch=4)
    real = mod.cross_entropy_by_hand
    monkeypatch.setattr(mod, "cross_entropy_by_hand", lambda z, t, r="mean", **kw:
                        real(z, t, r, label_smoothing=0.1))
    with pytest.raises(ClaimError, match="hand formula"):
        mod.step_2_cross_entropy_indices(DEV, batch=4, classes=5)
    with pytest.raises(ClaimError, match="probability targets"):
        mod.step_4_probability_targets(DEV, batch=4, classes=5)


def test_08_scores_claims_fail_for_a_loss_that_takes_probabilities(note, monkeypatch):
    mod = note("nn_modules/08_nn_loss.py")
    mod.step_3_scores_not_probabilities(DEV, batch=4, classes=5)      # the real loss: holds
    real = nn.CrossEntropyLoss

    def probabilities_loss(reduction="mean"):               # NLL of log(input): wants probs
        return lambda x, y: F.nll_loss(x.clamp_min(1e-30).log(), y, reduction=reduction)

    monkeypatch.setattr(mod.nn, "CrossEntropyLoss", probabilities_loss)
    with pytest.raises(ClaimError, match="as raw scores"):
        mod.step_3_scores_not_probabilities(DEV, batch=4, classes=5)

    def takes_either(reduction="mean"):                     # scores as CE, probability rows as NLL
        def loss(x, y):
            if bool((x >= 0).all()) and torch.allclose(x.sum(1), torch.ones(len(x))):
                return probabilities_loss(reduction)(x, y)
            return real(reduction=reduction)(x, y)
        return loss

    monkeypatch.setattr(mod.nn, "CrossEntropyLoss", takes_either)
    with pytest.raises(ClaimError, match="as probabilities"):
        mod.step_3_scores_not_probabilities(DEV, batch=4, classes=5)


def test_08_one_hot_claim_fails_for_shifted_one_hot(note, monkeypatch):
    mod = note("nn_modules/08_nn_loss.py")
    real = F.one_hot
    monkeypatch.setattr(mod.F, "one_hot", lambda t, c: real((t + 1) % c, c))
    with pytest.raises(ClaimError, match="one-hot"):
        mod.step_4_probability_targets(DEV, batch=4, classes=5)


def test_08_label_smoothing_and_weight_claims_fail(note, monkeypatch):
    mod = note("nn_modules/08_nn_loss.py")
    real = nn.CrossEntropyLoss
    monkeypatch.setattr(mod.nn, "CrossEntropyLoss", lambda label_smoothing=0.0, **kw: real(**kw))
    with pytest.raises(ClaimError, match="label_smoothing"):
        mod.step_4_probability_targets(DEV, batch=4, classes=5)
    monkeypatch.setattr(mod.nn, "CrossEntropyLoss", lambda weight=None, reduction="mean":
                        real(weight=weight if reduction == "none" else None, reduction=reduction))
    with pytest.raises(ClaimError, match="weight"):
        mod.step_5_class_weights(DEV, batch=8, classes=5)


# 09 ------------------------------------------------------------------------------------------

def test_09_gradient_claims_fail(note):
    mod = note("nn_modules/09_nn_loss_network.py")
    imgs, labels = batches(2)[0]
    model = mod.Moli()
    model.model1[8].bias.requires_grad_(False)              # a frozen parameter gets no grad
    with pytest.raises(ClaimError, match="after backward"):
        mod.step_1_every_parameter_gets_a_gradient(model, imgs, labels)
    model = mod.Moli()
    model(imgs).sum().backward()                            # stale grads from an earlier pass
    with pytest.raises(ClaimError, match="before backward"):
        mod.step_1_every_parameter_gets_a_gradient(model, imgs, labels)
    with pytest.raises(ClaimError, match="ln"):
        mod.step_2_untrained_loss_is_ln10(torch.tensor(3.0))


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


def test_09_finite_difference_claim_fails_for_a_wrong_backward(note):
    mod = note("nn_modules/09_nn_loss_network.py")

    class DoubleGrad(torch.autograd.Function):              # identity forward, 2x backward
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    class Wrong(nn.Module):
        def forward(self, x):
            return DoubleGrad.apply(x)

    imgs, labels = batches(2)[0]
    model = mod.Moli()
    model.model1.append(Wrong())                            # after model1.8: names unchanged
    with pytest.raises(ClaimError, match="finite difference"):
        mod.step_4_finite_difference_probe(model, imgs, labels, DEV, probe_images=2)


# 10 ------------------------------------------------------------------------------------------

def test_10_step_claims_fail(note, monkeypatch):
    mod = note("nn_modules/10_nn_optim.py")
    two = batches(2, 2)
    mod.step_1_two_steps_by_hand(two, 0.1)                  # plain SGD: holds
    real = torch.optim.SGD
    monkeypatch.setattr(mod.torch.optim, "SGD", lambda params, lr: real(params, lr=lr,
                                                                        weight_decay=0.5))
    with pytest.raises(ClaimError, match="first step"):
        mod.step_1_two_steps_by_hand(two, 0.1)
    # Momentum's first step is p - lr * g1 too (its buffer starts as g1); the second is not.
    monkeypatch.setattr(mod.torch.optim, "SGD", lambda params, lr: real(params, lr=lr,
                                                                        momentum=0.9))
    with pytest.raises(ClaimError, match="no momentum"):
        mod.step_1_two_steps_by_hand(two, 0.1)

    class KeepsZeros(real):
        def zero_grad(self, set_to_none=True):
            super().zero_grad(set_to_none=False)

    monkeypatch.setattr(mod.torch.optim, "SGD", KeepsZeros)
    with pytest.raises(ClaimError, match="None"):
        mod.step_1_two_steps_by_hand(two, 0.1)


class NeverZeros(torch.optim.SGD):                          # the loop without zero_grad()
    def zero_grad(self, set_to_none=True):
        pass


def test_10_loop_grad_claim_fails_without_zero_grad(note, monkeypatch):
    mod = note("nn_modules/10_nn_optim.py")
    ds, cfg = tiny_dataset(4), dict(rounds=1, batch_size=2, lr=0.01, device=DEV)
    mod.train(ds, seed=0, check_grad=True, **cfg)           # the note's loop: holds
    monkeypatch.setattr(mod.torch.optim, "SGD", NeverZeros)
    with pytest.raises(ClaimError, match="gradient alone"):
        mod.train(ds, seed=0, check_grad=True, **cfg)


def test_10_loss_falls_claim_fails_when_zero_grad_runs_before_step(note, monkeypatch):
    mod = note("nn_modules/10_nn_optim.py")

    class ZerosTooLate(torch.optim.SGD):                    # backward, zero_grad, step
        def zero_grad(self, set_to_none=True):
            pass

        def step(self, closure=None):
            super().zero_grad()                             # .grad is None: step() skips p
            return super().step(closure)

    monkeypatch.setattr(mod.torch.optim, "SGD", ZerosTooLate)
    losses = mod.train(tiny_dataset(4), seed=0, rounds=3, batch_size=4, lr=0.01, device=DEV)
    with pytest.raises(ClaimError, match="loss fell"):
        mod.step_2_loss_falls(losses)


def test_10_loss_falls_claim_fails_with_zero_learning_rate(note):
    mod = note("nn_modules/10_nn_optim.py")
    losses = mod.train(tiny_dataset(4), seed=0, rounds=3, batch_size=4, lr=0.0, device=DEV)
    assert losses[0] == losses[-1]                          # lr 0: nothing moves
    with pytest.raises(ClaimError, match="loss fell"):
        mod.step_2_loss_falls(losses)


def test_10_reproducibility_claims_fail(note, monkeypatch):
    mod = note("nn_modules/10_nn_optim.py")
    ds, cfg = tiny_dataset(4), dict(rounds=2, batch_size=2, lr=0.01)
    first = mod.train(ds, seed=0, device=DEV, **cfg)
    with pytest.raises(ClaimError, match="same seed"):
        mod.step_3_reproducible([x + 1e-6 for x in first], ds, cfg, 0, DEV)
    real = mod.train
    monkeypatch.setattr(mod, "train", lambda dataset, *, seed, **kw: real(dataset, seed=0, **kw))
    with pytest.raises(ClaimError, match="different seed"):     # the seed is ignored
        mod.step_3_reproducible(first, ds, cfg, 0, DEV)


def test_10_running_loss_claims_fail_without_a_graph(note, monkeypatch):
    mod = note("nn_modules/10_nn_optim.py")
    real = nn.CrossEntropyLoss

    class Detached(real):                                   # a loss that carries no graph
        def forward(self, z, y):
            return super().forward(z, y).detach().requires_grad_()

    monkeypatch.setattr(mod.nn, "CrossEntropyLoss", Detached)
    with pytest.raises(ClaimError, match="every step's loss graph"):
        mod.step_4_running_loss_tensor(tiny_dataset(4), 2, 0.01, DEV)
    monkeypatch.setattr(mod.nn, "CrossEntropyLoss", real)
    with torch.no_grad(), pytest.raises(ClaimError, match="keeps every batch's graph"):
        mod.step_5_eval_without_no_grad(mod.Moli(), tiny_dataset(4), 2, DEV)


# 11 ------------------------------------------------------------------------------------------

class EvalOnlyBN(nn.BatchNorm2d):
    """A BatchNorm stuck in eval mode: train() does nothing."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.training = False

    def train(self, mode=True):
        return super().train(False)


def test_11_batchnorm_train_claims_fail(note, monkeypatch):
    mod = note("nn_modules/11_nn_common_layers.py")
    shape = dict(batch=2, channels=3, size=4)
    real_bn = nn.BatchNorm2d

    class FastMomentum(nn.BatchNorm2d):                     # updates faster than it says
        def forward(self, x):
            self.momentum = 0.5
            out = super().forward(x)
            self.momentum = 0.1
            return out

    monkeypatch.setattr(mod.nn, "BatchNorm2d", FastMomentum)
    with pytest.raises(ClaimError, match="running_mean"):
        mod.step_1_batchnorm_train(DEV, **shape)

    class BiasedRunningVar(real_bn):                 # running_var from the biased var
        def forward(self, x):
            old = self.running_var.clone()
            out = super().forward(x)
            with torch.no_grad():
                biased = x.var(dim=(0, 2, 3), correction=0)
                self.running_var.copy_((1 - self.momentum) * old + self.momentum * biased)
            return out

    monkeypatch.setattr(mod.nn, "BatchNorm2d", BiasedRunningVar)
    with pytest.raises(ClaimError, match="running_var"):
        mod.step_1_batchnorm_train(DEV, **shape)
    monkeypatch.setattr(mod.nn, "BatchNorm2d", EvalOnlyBN)
    with pytest.raises(ClaimError, match="train-mode output"):
        mod.step_1_batchnorm_train(DEV, **shape)


def test_11_batchnorm_eval_claims_fail(note):
    mod = note("nn_modules/11_nn_common_layers.py")
    shape = dict(batch=3, channels=3, size=4)

    class TrainOnlyBN(nn.BatchNorm2d):
        def train(self, mode=True):
            return super().train(True)

    with pytest.raises(ClaimError, match="running_mean"):
        mod.step_2_batchnorm_eval(TrainOnlyBN(3), DEV, **shape)
    with pytest.raises(ClaimError, match="depends on the rest"):
        mod.step_2_batchnorm_eval(EvalOnlyBN(3), DEV, **shape)


def test_11_dropout_claims_fail(note, monkeypatch):
    mod = note("nn_modules/11_nn_common_layers.py")
    real = nn.Dropout
    monkeypatch.setattr(mod.nn, "Dropout", lambda p: real(p / 2))   # drops half as often
    with pytest.raises(ClaimError, match="fraction zeroed"):
        mod.step_3_dropout(DEV, dropout_units=20_000)

    class NoRescale(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            return x * (torch.rand_like(x) >= self.p) if self.training else x

    monkeypatch.setattr(mod.nn, "Dropout", NoRescale)
    with pytest.raises(ClaimError, match="1/"):
        mod.step_3_dropout(DEV, dropout_units=20_000)

    class AlwaysDrops(real):
        def forward(self, x):
            return F.dropout(x, self.p, training=True)

    monkeypatch.setattr(mod.nn, "Dropout", AlwaysDrops)
    with pytest.raises(ClaimError, match="identity"):
        mod.step_3_dropout(DEV, dropout_units=20_000)


def test_11_pooling_claims_fail(note, monkeypatch):
    mod = note("nn_modules/11_nn_common_layers.py")
    shape = dict(batch=2, channels=2, size=6)
    monkeypatch.setattr(mod, "avgpool_by_hand",
                        lambda x, k, s: x.unfold(2, k, s).unfold(3, k, s).amax(dim=(-2, -1)))
    with pytest.raises(ClaimError, match="AvgPool2d"):
        mod.step_4_pooling(DEV, **shape)
    monkeypatch.undo()
    monkeypatch.setattr(mod.nn, "AdaptiveAvgPool2d", nn.AdaptiveMaxPool2d)
    with pytest.raises(ClaimError, match="mean over H, W"):
        mod.step_4_pooling(DEV, **shape)


def test_11_flatten_and_embedding_claims_fail(note, monkeypatch):
    mod = note("nn_modules/11_nn_common_layers.py")
    shape = dict(batch=2, channels=2, size=4)
    real_one_hot = F.one_hot
    monkeypatch.setattr(mod.F, "one_hot", lambda t, c: real_one_hot((t + 1) % c, c))
    with pytest.raises(ClaimError, match="one_hot"):
        mod.step_5_flatten_and_embedding(DEV, **shape)
    monkeypatch.undo()
    real_flatten = nn.Flatten
    monkeypatch.setattr(mod.nn, "Flatten", lambda: real_flatten(0))    # merges the batch too
    with pytest.raises(ClaimError, match="Flatten"):
        mod.step_5_flatten_and_embedding(DEV, **shape)


def test_11_padding_idx_claim_fails_when_padding_idx_is_ignored(note, monkeypatch):
    mod = note("nn_modules/11_nn_common_layers.py")
    real = nn.Embedding
    monkeypatch.setattr(mod.nn, "Embedding", lambda n, d, padding_idx=None: real(n, d))
    with pytest.raises(ClaimError, match="padding_idx"):
        mod.step_6_embedding_padding_idx(DEV, 2)


def test_11_dropout2d_claim_fails_for_elementwise_dropout(note, monkeypatch):
    mod = note("nn_modules/11_nn_common_layers.py")
    monkeypatch.setattr(mod.nn, "Dropout2d", nn.Dropout)
    with pytest.raises(ClaimError, match="all 0 or all"):
        mod.step_7_dropout2d(DEV, dropout_units=20_000)

    class HalfRate(nn.Module):                              # whole channels, but half as often
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            keep = torch.rand(*x.shape[:2], 1, 1) >= self.p / 2
            return x * keep / (1 - self.p)

    monkeypatch.setattr(mod.nn, "Dropout2d", HalfRate)
    with pytest.raises(ClaimError, match="fraction of channels"):
        mod.step_7_dropout2d(DEV, dropout_units=20_000)


def test_11_cnn_claims_fail(note, monkeypatch):
    mod = note("nn_modules/11_nn_common_layers.py")
    real = mod.small_cnn
    monkeypatch.setattr(mod, "small_cnn", lambda: nn.Sequential(*real().children()))  # no names
    with pytest.raises(ClaimError, match="OrderedDict"):
        mod.step_8_named_conv_bn_relu(DEV, 2, 8)
    monkeypatch.setattr(mod, "small_cnn", real)
    monkeypatch.setattr(mod.nn, "BatchNorm2d", EvalOnlyBN)   # eval BN keeps the bias
    with pytest.raises(ClaimError, match="removes a conv bias"):
        mod.step_8_named_conv_bn_relu(DEV, 2, 8)
    monkeypatch.undo()

    def fixed_size():                                       # a fixed pool instead of adaptive
        cnn = real()
        cnn.gap = nn.AvgPool2d(4)
        return cnn

    monkeypatch.setattr(mod, "small_cnn", fixed_size)
    with pytest.raises(ClaimError, match="any image size"):
        mod.step_8_named_conv_bn_relu(DEV, 2, 8)
