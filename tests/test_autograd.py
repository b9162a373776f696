"""Unit tests for the autograd series: the functions the scripts expose, pinned against
PyTorch, and proof that their claims can really fail (a broken piece raises ClaimError)."""

from __future__ import annotations

import pytest
import torch

from torchnotes import ClaimError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------- 00 interactive playground

def test_jacobian_by_rows_matches_torch_on_a_random_map(note):
    mod = note("autograd/00_interactive_playground.py")
    A = torch.randn(4, 3, dtype=torch.float64)

    def fn(x):
        return torch.sin(A @ x) * x.sum()

    x = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(mod.jacobian_by_rows(fn, x),
                               torch.autograd.functional.jacobian(fn, x))
    torch.testing.assert_close(mod.jacobian_by_rows(mod.g, x[:2]), mod.g_jacobian(x[:2]))


def test_00_wrong_derivative_is_caught(note, monkeypatch):
    mod = note("autograd/00_interactive_playground.py")
    monkeypatch.setattr(mod, "cubic_derivative", lambda x: 3 * x**2)      # forgot the + 2
    with pytest.raises(ClaimError, match="closed form"):
        mod.step_2_derivative(CPU, n_points=3)


# ----------------------------------------------------------------------- 01 manual gradient

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_manual_gradients_match_autograd(note, seed):
    mod = note("autograd/01_manual_gradient.py")
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g,
                                                                          dtype=torch.float64)
    w = torch.randn((), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn((), generator=g, dtype=torch.float64, requires_grad=True)
    loss, d_w, d_b = mod.manual_gradients(w.detach(), b.detach(), x, y)
    ref = ((w * x + b - y) ** 2).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(torch.stack([d_w, d_b]), torch.stack([w.grad, b.grad]))


def test_01_wrong_hand_gradient_is_caught(note, monkeypatch):
    mod = note("autograd/01_manual_gradient.py")
    right = mod.manual_gradients

    def missing_factor_two(w, b, x, y):                      # a classic derivation slip
        loss, d_w, d_b = right(w, b, x, y)
        return loss, d_w / 2, d_b / 2

    monkeypatch.setattr(mod, "manual_gradients", missing_factor_two)
    with pytest.raises(ClaimError, match="finite difference"):
        mod.step_1_hand_equals_finite_difference(CPU, n_points=16)
    with pytest.raises(ClaimError, match="autograd"):
        mod.step_2_hand_equals_autograd(CPU, n_points=16)


# ------------------------------------------------------------------- 03 computational graph

def test_backward_path_names(note):
    mod = note("autograd/03_computational_graph.py")
    x = torch.randn(3, requires_grad=True)
    names = [type(n).__name__ for n in mod.backward_path((x.exp() * 2).mean())]
    assert names == ["MeanBackward0", "MulBackward0", "ExpBackward0", "AccumulateGrad"]


def test_03_detach_claim_fails_if_detach_keeps_history(note, monkeypatch):
    mod = note("autograd/03_computational_graph.py")
    monkeypatch.setattr(torch.Tensor, "detach", lambda self: self)     # a detach that cuts nothing
    with pytest.raises(ClaimError, match="detach"):
        mod.step_4_detach_cuts_the_graph(CPU, n=3)


# --------------------------------------------------------------------------------- 04 hooks

def test_04_hook_claims_fail_if_hooks_never_run(note, monkeypatch):
    mod = note("autograd/04_hooks.py")
    monkeypatch.setattr(torch.Tensor, "register_hook", lambda self, hook: None)
    with pytest.raises(ClaimError, match="hook ran once"):
        mod.step_1_tensor_hook_sees_gradient(CPU, batch=4)
    with pytest.raises(ClaimError, match="rescaled"):
        mod.step_2_tensor_hook_rescales(CPU, batch=4)


# ---------------------------------------------------------------- 05 Jacobian and Hessian

def test_hand_loops_match_torch_on_random_functions(note):
    mod = note("autograd/05_jacobian_and_advanced_autograd.py")
    A = torch.randn(3, 4, dtype=torch.float64)

    def f(x):
        return torch.tanh(A @ x) * x[0]                                    # R^4 -> R^3

    def h(x):
        return (x**3).sum() + x[0] * x[1] * torch.exp(x[2])               # R^4 -> R

    x = torch.randn(4, dtype=torch.float64)
    v, u = torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(f, x)
    torch.testing.assert_close(mod.jacobian_by_hand(f, x), J)
    torch.testing.assert_close(mod.vjp_by_hand(f, x, v), v @ J)
    torch.testing.assert_close(mod.jvp_by_double_vjp(f, x, u), J @ u)
    torch.testing.assert_close(mod.hessian_by_hand(h, x),
                               torch.autograd.functional.hessian(h, x))


def test_05_transposed_jacobian_is_caught(note, monkeypatch):
    mod = note("autograd/05_jacobian_and_advanced_autograd.py")
    right = mod.jacobian_by_hand
    # Square problem (n == m) so the transposed Jacobian still has the right shape.
    monkeypatch.setattr(mod, "jacobian_by_hand", lambda f, x: right(f, x).T)
    with pytest.raises(ClaimError, match="closed form"):
        mod.step_2_jacobian(mod.make_problem(3, 3, CPU))


# -------------------------------------------------------- 06 accumulation and other tricks

def test_accumulated_gradient_equals_full_batch(note):
    mod = note("autograd/06_gradient_accumulation_and_tricks.py")
    model = mod.make_model(3, 5, CPU).double()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64)
    big = mod.full_batch_gradient(model, x, y)
    torch.testing.assert_close(mod.accumulated_gradient(model, x, y, k=4), big)
    torch.testing.assert_close(mod.accumulated_gradient(model, x, y, k=3, scale=False), 3 * big)


def test_06_accumulation_without_scaling_is_caught(note, monkeypatch):
    mod = note("autograd/06_gradient_accumulation_and_tricks.py")
    right = mod.accumulated_gradient
    monkeypatch.setattr(mod, "accumulated_gradient",
                        lambda model, x, y, k, scale=True: right(model, x, y, k, scale=False))
    with pytest.raises(ClaimError, match="big-batch gradient"):
        mod.step_1_accumulation(CPU, micro_batch=2, k=3, d_in=3, hidden=4)


# ------------------------------------------------------------------ 07 custom Functions

def test_custom_functions_against_torch(note):
    mod = note("autograd/07_custom_autograd_function.py")
    x = torch.randn(10, dtype=torch.float64, requires_grad=True)
    y = torch.randn(10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mod.XYSin.apply, (x, y))
    xr = mod.away_from(x.detach(), torch.zeros(1, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(mod.MyReLU.apply, (xr,))
    torch.testing.assert_close(mod.MyReLU.apply(x), torch.relu(x))
    v = torch.randn(10, dtype=torch.float64)
    (grad,) = torch.autograd.grad(mod.RoundSTE.apply(x), x, v)
    assert torch.equal(grad, v)
    # away_from really keeps every point off the given kinks.
    pts = torch.tensor([0.5, 1.5])
    moved = mod.away_from(torch.tensor([0.49, 0.9, 1.52]), pts)
    assert (moved.unsqueeze(-1) - pts).abs().min() >= 0.05


def test_07_wrong_backward_is_caught(note, monkeypatch):
    mod = note("autograd/07_custom_autograd_function.py")
    # The backward of identity, not of ReLU: the mask is forgotten.
    monkeypatch.setattr(mod.MyReLU, "backward", staticmethod(lambda ctx, grad_out: grad_out))
    with pytest.raises(ClaimError, match="backward"):
        mod.step_1_relu_matches_torch(CPU, n=8)
    with pytest.raises(ClaimError, match="gradcheck"):
        mod.step_2_relu_gradcheck(CPU, n=8)


# ------------------------------------------------------------------ 08 tensors and devices

def test_shares_memory(note):
    mod = note("autograd/08_tensor_operations_and_gpu.py")
    t = torch.arange(6)
    assert mod.shares_memory(t, t.view(2, 3)) and mod.shares_memory(t, t[2:])
    assert not mod.shares_memory(t, t.clone())
    assert mod.shares_memory(t, torch.from_numpy(t.numpy()))         # both ways share
    assert not mod.shares_memory(t, torch.tensor(t.numpy()))         # torch.tensor copies


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("shift", ["absolute", "relative"])
def test_08_device_mismatch_is_caught(note, monkeypatch, device_type, shift):
    mod = note("autograd/08_tensor_operations_and_gpu.py")
    right, right_tolerance = mod.compute, mod.tolerance
    # The check runs on the CPU here, but with the tolerance the script would use on
    # device_type (tolerance() needs no GPU), so the GPU tolerance is proven tight enough too.
    monkeypatch.setattr(mod, "tolerance",
                        lambda device: right_tolerance(torch.device(device_type)))
    n = 8 if shift == "absolute" else 256

    def off_by_1e_3(x, w):           # a "device" path off by 1e-3 (absolute or relative)
        out = right(x, w)
        if x.dtype != torch.float32:
            return out
        return out + 1e-3 if shift == "absolute" else out * (1 + 1e-3)

    err = mod.step_7_same_result_on_device(CPU, n=n)                      # unbroken: passes
    assert err <= right_tolerance(torch.device(device_type))
    monkeypatch.setattr(mod, "compute", off_by_1e_3)
    with pytest.raises(ClaimError, match="float64 on the CPU"):
        mod.step_7_same_result_on_device(CPU, n=n)


def test_02_claims_fail_when_the_lesson_is_broken(note):
    mod = note("autograd/02_autograd_basics.py")
    cpu = torch.device("cpu")
    # lr = 0: nothing is learned, so the loss claim must not pass.
    with pytest.raises(ClaimError, match="the loss fell below a tenth"):
        mod.step_5_fit_a_line(cpu, n_points=16, steps=5, lr=0.0)
    # Too few steps to reach (2, 1): the recovery claim must fail even though the loss falls.
    with pytest.raises(ClaimError, match=r"recovers the true \(2, 1\)"):
        mod.step_5_fit_a_line(cpu, n_points=16, steps=20, lr=0.1)
