"""Unit tests for the autograd series: the functions the scripts expose, pinned against
PyTorch, and proof that their claims can really fail (a broken piece raises ClaimError)."""

from __future__ import annotations

import contextlib
import types

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


@pytest.mark.parametrize("wrong", [
    lambda x: 3 * x**2,                  # forgot the + 2
    lambda x: 3 / x**2 + 2,              # mistyped: infinite at x = 0, which the points include
], ids=["forgot_plus_2", "divides_by_x_squared"])
def test_00_wrong_derivative_is_caught(note, monkeypatch, wrong):
    mod = note("autograd/00_interactive_playground.py")
    monkeypatch.setattr(mod, "cubic_derivative", wrong)
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
    with pytest.raises(ClaimError, match="reversed"):
        mod.step_2_gradient_reversal(CPU, batch=4)


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
def test_09_device_mismatch_is_caught(note, monkeypatch, device_type, shift):
    mod = note("autograd/09_tensor_math_and_devices.py")
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

    err = mod.step_5_same_result_on_device(CPU, n=n)                      # unbroken: passes
    assert err <= right_tolerance(torch.device(device_type))
    monkeypatch.setattr(mod, "compute", off_by_1e_3)
    with pytest.raises(ClaimError, match="float64 on the CPU"):
        mod.step_5_same_result_on_device(CPU, n=n)


def test_02_claims_fail_when_the_lesson_is_broken(note):
    mod = note("autograd/02_autograd_basics.py")
    cpu = torch.device("cpu")
    # lr = 0: nothing is learned, so the loss claim must not pass.
    with pytest.raises(ClaimError, match="the loss fell below a tenth"):
        mod.step_7_fit_a_line(cpu, n_points=16, steps=5, lr=0.0)
    # Too few steps to reach (2, 1): the recovery claim must fail even though the loss falls.
    with pytest.raises(ClaimError, match=r"recovers the true \(2, 1\)"):
        mod.step_7_fit_a_line(cpu, n_points=16, steps=20, lr=0.1)


# ------------------------------------------------- every claim family, broken on purpose
#
# Each case: the note, a plausible mistake (in the lesson code, or a wrong belief about
# PyTorch, simulated by patching it), the step to run, and the claim that must then fail.
# Patches live only for the one test (monkeypatch undoes them).

def _backward_scaled(scale):
    """A backward() that feeds ``scale`` instead of 1 as the upstream gradient."""
    right = torch.Tensor.backward

    def backward(self, gradient=None, *args, **kwargs):
        if gradient is None:
            gradient = torch.full_like(self, scale)
        return right(self, gradient, *args, **kwargs)
    return backward


def _leaves(t):
    """The leaf tensors under t's graph (AccumulateGrad nodes hold them)."""
    seen, stack, out = set(), [t.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            out.append(node.variable)
        stack.extend(n for n, _ in node.next_functions)
    return out


def _backward_replacing():
    """A backward() that overwrites .grad instead of adding to it (the wrong mental model)."""
    right = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        for leaf in _leaves(self):
            leaf.grad = None
        return right(self, *args, **kwargs)
    return backward


def _always(value):
    return lambda *args, **kwargs: value


def _clip_each_parameter(params, max_norm):
    """A plausible clip_grad_norm_: every parameter's gradient clipped on its own to
    max_norm / sqrt(k). The total stays under max_norm, the true norm is returned, but the
    direction changes (small gradients keep their size while large ones shrink)."""
    params = list(params)
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    share = max_norm / len(params) ** 0.5
    for p in params:
        p.grad.mul_(min(1.0, share / (p.grad.norm().item() + 1e-12)))
    return total


def _patch(target, name, value):
    """Patch target.<name>; target is an object, or ``lambda mod: ...`` naming one in the note."""
    def apply(mod, mp):
        obj = target(mod) if isinstance(target, types.FunctionType) else target
        mp.setattr(obj, name, value)
    return apply


def _wrap(name, make):
    """Patch mod.<name> with make(original)."""
    return lambda mod, mp: mp.setattr(mod, name, make(getattr(mod, name)))


def _wrap_method(cls, name, make):
    """Patch cls.<name> with make(original) (a wrong belief about PyTorch, simulated)."""
    return lambda mod, mp: mp.setattr(cls, name, make(getattr(cls, name)))


def _make_dual_permuted(mod, mp):
    right = mod.fwAD.make_dual
    mp.setattr(mod.fwAD, "make_dual", lambda t, tangent: right(t, tangent.flip(0)))


def _first_tensor_forgets_device(mod, mp):
    mp.setattr(mod, "first_tensor", lambda device: torch.arange(3.0) ** 2)


def _clone_on_getitem(mod, mp):
    right = torch.Tensor.__getitem__
    mp.setattr(torch.Tensor, "__getitem__", lambda self, i: right(self, i).clone())


def _sub_under_no_grad(mod, mp):
    right = torch.Tensor.sub_

    def sub_(self, *args, **kwargs):
        with torch.no_grad():
            return right(self, *args, **kwargs)
    mp.setattr(torch.Tensor, "sub_", sub_)


def _mul_retaining_grad(mod, mp):
    right = torch.Tensor.__mul__

    def mul(self, other):
        out = right(self, other)
        if out.requires_grad:
            out.retain_grad()
        return out
    mp.setattr(torch.Tensor, "__mul__", mul)


def _backward_always_retains(mod, mp):
    right = torch.Tensor.backward
    mp.setattr(torch.Tensor, "backward",
               lambda self, *a, **k: right(self, *a, **{**k, "retain_graph": True}))


def _grad_also_fills(mod, mp):
    right = torch.autograd.grad

    def grad(outputs, inputs, *args, **kwargs):
        result = right(outputs, inputs, *args, **kwargs)
        if isinstance(inputs, torch.Tensor):
            inputs.grad = result[0].detach()
        return result
    mp.setattr(torch.autograd, "grad", grad)


def _linear_twice(mod, mp):
    right = torch.nn.Linear.forward
    mp.setattr(torch.nn.Linear, "forward", lambda self, x: 2 * right(self, x))


def _old_hook_is_full(mod, mp):
    mp.setattr(torch.nn.Module, "register_backward_hook",
               torch.nn.Module.register_full_backward_hook)


def _forward_difference(mod, mp):
    def forward_difference(f, x, h=1e-6):      # one-sided: error O(h), not O(h^2)
        grad = torch.zeros_like(x)
        for i in range(x.numel()):
            e = torch.zeros_like(x)
            e.view(-1)[i] = h
            grad.view(-1)[i] = (f(x + e) - f(x)) / h
        return grad
    mp.setattr(mod, "central_difference", forward_difference)


def _permute_reversed(mod, mp):
    right = torch.Tensor.permute
    mp.setattr(torch.Tensor, "permute",
               lambda self, *dims: right(self, *reversed(range(self.dim()))))


def _expand_copies(mod, mp):
    mp.setattr(torch.Tensor, "expand",
               lambda self, *sizes: self.repeat(*[s // d for s, d in zip(sizes, self.shape,
                                                                          strict=True)]))


def _sum_ignores_keepdim(mod, mp):
    right = torch.Tensor.sum
    mp.setattr(torch.Tensor, "sum", lambda self, *a, keepdim=False, **k: right(self, *a, **k))


def _numpy_detaches(mod, mp):
    right = torch.Tensor.numpy
    mp.setattr(torch.Tensor, "numpy", lambda self, **k: right(self.detach(), **k))


def _frozen_never(mod, mp):
    mp.setattr(torch.nn.Module, "requires_grad_", lambda self, requires_grad=True: self)


def _no_filter(mod, mp):
    mp.setattr(mod, "filter", lambda fn, items: items, raising=False)


def _normal_equations_after_early_stop(m):
    torch.manual_seed(0)
    x, y = m.make_data(16, CPU)
    w, b, _ = m.descend(x, y, 30, 0.1, lambda w, b: m.manual_gradients(w, b, x, y))
    torch.manual_seed(0)                                     # the same data inside the step
    return m.step_5_normal_equations(CPU, 16, fit={"w": w.item(), "b": b.item()})


def _step_1_meta(mod):
    return mod.step_1_environment(torch.device("meta"))


N00, N01, N02, N03 = ("autograd/00_interactive_playground.py", "autograd/01_manual_gradient.py",
                      "autograd/02_autograd_basics.py", "autograd/03_computational_graph.py")
N04, N05, N06, N07 = ("autograd/04_hooks.py", "autograd/05_jacobian_and_advanced_autograd.py",
                      "autograd/06_gradient_accumulation_and_tricks.py",
                      "autograd/07_custom_autograd_function.py")
N08, N09 = "autograd/08_tensor_operations_and_gpu.py", "autograd/09_tensor_math_and_devices.py"

BREAKS = {
    # 00
    "00 device: a tensor made without device=": (
        N00, _first_tensor_forgets_device, _step_1_meta, "lives on the selected device"),
    "00 jacobian: rows in the wrong order": (
        N00, _wrap("jacobian_by_rows", lambda right: lambda fn, x: right(fn, x).flip(0)),
        lambda m: m.step_3_jacobian(CPU), "closed form"),
    "00 reverse vs forward: tangents in the wrong order": (
        N00, _make_dual_permuted,
        lambda m: m.step_4_reverse_mode_suits_a_loss(CPU, n_params=4), "one backward"),
    # 01
    "01 fit: descent that does not move": (
        N01, None, lambda m: m.step_3_fit_with_hand_gradients(CPU, 16, steps=50, lr=0.0),
        "loss went down"),
    "01 same path: autograd's gradient off by 1%": (
        N01, _wrap("autograd_gradients", lambda right: lambda x, y: (
            lambda w, b: tuple(t * 1.01 for t in right(x, y)(w, b)))),
        lambda m: m.step_4_autograd_follows_the_same_path(
            CPU, 16, 30, 0.1, hand=m.step_3_fit_with_hand_gradients(CPU, 16, 300, 0.1)),
        "same loss"),
    "01 normal equations: descent stopped early": (
        N01, None, lambda m: _normal_equations_after_early_stop(m), "normal-equation"),
    "01 lr bound: forgot the 2 in 2 / lambda_max": (
        N01, _wrap("lr_bound", lambda right: lambda x: right(x) / 2),
        lambda m: m.step_6_learning_rate_bound(CPU, 16), "grows"),
    "01 lr bound: 4 / lambda_max": (
        N01, _wrap("lr_bound", lambda right: lambda x: right(x) * 2),
        lambda m: m.step_6_learning_rate_bound(CPU, 16), "falls"),
    # 02
    "02 closed form: a backward that doubles": (
        N02, _patch(torch.Tensor, "backward", _backward_scaled(2.0)),
        lambda m: m.step_1_backward_matches_closed_form(CPU), "closed form"),
    "02 accumulation: a backward that replaces .grad": (
        N02, _patch(torch.Tensor, "backward", _backward_replacing()),
        lambda m: m.step_2_grad_accumulates(CPU), "accumulates"),
    "02 zeroing: a backward that doubles": (
        N02, _patch(torch.Tensor, "backward", _backward_scaled(2.0)),
        lambda m: m.step_3_zeroing_fixes_it(CPU), "one step's"),
    "02 by design: a backward that replaces .grad": (
        N02, _patch(torch.Tensor, "backward", _backward_replacing()),
        lambda m: m.step_4_accumulation_is_by_design(CPU), "gradient of the sum"),
    "02 no_grad: a no_grad that records anyway": (
        N02, _patch(torch, "no_grad", contextlib.nullcontext),
        lambda m: m.step_5_no_grad_records_nothing(CPU), "nothing is recorded"),
    "02 leaf in place: an update that would not raise": (
        N02, _sub_under_no_grad, lambda m: m.step_5_no_grad_records_nothing(CPU),
        "in place outside no_grad"),
    "02 item: an .item() that rounds to an int": (
        N02, _wrap_method(torch.Tensor, "item", lambda right: lambda self: int(right(self))),
        lambda m: m.step_6_item_detach_data(CPU), "Python float"),
    "02 detach: a detach() that copies": (
        N02, _patch(torch.Tensor, "detach", lambda self: self.data.clone()),
        lambda m: m.step_6_item_detach_data(CPU), "share w's memory"),
    # 03
    "03 leaves: everything called a leaf": (
        N03, _patch(torch.Tensor, "is_leaf", property(lambda self: True)),
        lambda m: m.step_1_leaves_and_non_leaves(CPU, n=3), "leaves"),
    "03 leaf grad: a backward that doubles": (
        N03, _patch(torch.Tensor, "backward", _backward_scaled(2.0)),
        lambda m: m.step_1_leaves_and_non_leaves(CPU, n=3), "8x"),
    "03 non-leaf grad: every product retains its grad": (
        N03, _mul_retaining_grad, lambda m: m.step_1_leaves_and_non_leaves(CPU, n=3),
        "u.grad is None"),
    "03 grad_fn chain: walking the last input": (
        N03, _patch(lambda m: m, "backward_path", lambda t: [t.grad_fn]),
        lambda m: m.step_2_grad_fn_chain(CPU, n=3), "walks Sum"),
    "03 retain_graph: a graph that is never freed": (
        N03, _backward_always_retains, lambda m: m.step_3_retain_graph(CPU, n=3),
        "second backward"),
    "03 define-by-run: a fixed, traced-once graph": (
        N03, _patch(lambda m: m, "double_until_large", lambda x, limit=10.0: (8 * x).sum()),
        lambda m: m.step_5_define_by_run(CPU), "doublings"),
    "03 version counter: detach() behaving like .data": (
        N03, _patch(torch.Tensor, "detach", lambda self: self.data),
        lambda m: m.step_6_data_vs_detach(CPU, n=3), "refuses"),
    # 04
    "04 reversal: a hook that forgot the minus": (
        N04, _patch(lambda m: m, "reverse_gradient", lambda grad: grad),
        lambda m: m.step_2_gradient_reversal(CPU, batch=4), "reversed"),
    "04 forward hook: hooked the wrong layer": (
        N04, _wrap("make_model", lambda right: lambda *a: torch.nn.Sequential(
            *[right(*a)[i] if i != 1 else torch.nn.Tanh() for i in range(3)])),
        lambda m: m.step_3_forward_hook_captures(CPU, 4, 3, 5, 2), "recomputed by hand"),
    "04 backward hook: grad_input is not grad_output @ W": (
        N04, _linear_twice, lambda m: m.step_4_backward_hook_and_removal(CPU, 4, 3, 5, 2),
        "grad_output @ W2"),
    "04 removal: a remove() that does nothing": (
        N04, _patch(torch.utils.hooks.RemovableHandle, "remove", lambda self: None),
        lambda m: m.step_4_backward_hook_and_removal(CPU, 4, 3, 5, 2), "no longer called"),
    "04 ReLU hook: a leaky ReLU": (
        N04, _patch(torch.nn, "ReLU", lambda: torch.nn.LeakyReLU(0.1)),
        lambda m: m.step_5_relu_backward_hook(CPU, batch=8), "exactly 0"),
    "04 deprecated hook: if it were as good as the full one": (
        N04, _old_hook_is_full, lambda m: m.step_6_full_vs_deprecated_hook(CPU, batch=4),
        "deprecated"),
    # 05
    "05 vjp: backward() without v": (
        N05, _wrap("vjp_by_hand", lambda right: lambda f, x, v: right(f, x, torch.ones_like(v))),
        lambda m: m.step_1_vjp(m.make_problem(3, 2, CPU)), "v\\^T J"),
    "05 jvp: returned v^T J instead of J u": (
        N05, _patch(lambda m: m, "jvp_by_double_vjp",
                    lambda f, x, u: torch.ones(len(f(x))) @ torch.func.jacrev(f)(x)),
        lambda m: m.step_3_jvp(m.make_problem(3, 2, CPU)), "shapes differ|J u"),
    "05 hessian: half of it": (
        N05, _wrap("hessian_by_hand", lambda right: lambda h, x: right(h, x).triu()),
        lambda m: m.step_4_hessian(m.make_problem(3, 2, CPU)), "symmetric"),
    "05 vmap: per-sample Jacobians off by 1%": (
        N05, _wrap("jacobian_by_hand", lambda right: lambda f, x: 1.01 * right(f, x)),
        lambda m: m.step_5_vmap_per_sample_jacobians(m.make_problem(3, 2, CPU), 4), "vmap"),
    "05 higher derivatives: differentiated the original every time": (
        N05, _wrap("nth_derivatives", lambda right: lambda fn, x, order: right(fn, x, 1) * order),
        lambda m: m.step_6_higher_derivatives(CPU), "27, 18, 6"),
    "05 grad vs backward: a grad() that also fills .grad": (
        N05, _grad_also_fills, lambda m: m.step_6_higher_derivatives(CPU), "leaves .grad None"),
    "05 hvp: differentiated grad.sum(), not grad . v": (
        N05, _wrap("hvp_by_hand", lambda right: lambda h, x, v: right(h, x, torch.ones_like(v))),
        lambda m: m.step_7_hessian_vector_product(m.make_problem(3, 2, CPU)), "H v"),
    "05 definiteness: a sign slip in the Hessian": (
        N05, _wrap("hessian", lambda right: lambda f: lambda x: -right(f)(x)),
        lambda m: m.step_8_definiteness(CPU, 3), "positive definite"),
    "05 jacfwd vs jacrev: the two confused": (
        N05, _patch(lambda m: m, "jacfwd", torch.func.jacrev),
        lambda m: m.step_9_jacfwd_vs_jacrev(CPU, 3, 24), "jacfwd does"),
    # 06
    "06 clipping: clipped each value, not the norm": (
        N06, _patch(torch.nn.utils, "clip_grad_norm_",
                    lambda params, max_norm: torch.nn.utils.clip_grad_value_(params, max_norm)
                    or torch.tensor(0.0)),
        lambda m: m.step_2_clipping(CPU, 3, 4), "pre-clip norm"),
    "06 clipping: each parameter clipped to its share of the norm (turns the gradient)": (
        N06, _patch(torch.nn.utils, "clip_grad_norm_", _clip_each_parameter),
        lambda m: m.step_2_clipping(CPU, 3, 4), "keeps its direction"),
    "06 central difference: a one-sided difference": (
        N06, _forward_difference, lambda m: m.step_3_finite_differences(CPU, 3),
        "central difference"),
    "06 gradcheck: a gradcheck that always passes": (
        N06, _patch(torch.autograd, "gradcheck", _always(True)),
        lambda m: m.step_3_finite_differences(CPU, 3), "hook doubles"),
    "06 frozen: a freeze that does nothing": (
        N06, _frozen_never, lambda m: m.step_4_frozen_parameters(CPU, 3, 4), "stays None"),
    "06 weight decay: Adam's L2 penalty instead of AdamW's decay": (
        N06, _patch(torch.optim, "AdamW", torch.optim.Adam),
        lambda m: m.step_5_weight_decay_caveat(CPU, 3, 4), "still decayed"),
    "06 weight decay: optimiser built without the filter": (
        N06, _no_filter, lambda m: m.step_5_weight_decay_caveat(CPU, 3, 4), "stay put"),
    "06 inference_mode: if it were no_grad": (
        N06, _patch(torch, "inference_mode", torch.no_grad),
        lambda m: m.step_6_inference_mode(CPU, 3, 4), "inference tensor"),
    # 07
    "07 STE: a backward that returns zeros": (
        N07, _patch(lambda m: m.RoundSTE, "backward",
                    staticmethod(lambda ctx, g: torch.zeros_like(g))),
        lambda m: m.step_3_straight_through(CPU, 8), "identity"),
    "07 STE training: a backward that returns zeros": (
        N07, _patch(lambda m: m.RoundSTE, "backward",
                    staticmethod(lambda ctx, g: torch.zeros_like(g))),
        lambda m: m.step_4_ste_trains(CPU, 30), "learns to round"),
    "07 two inputs: gradients returned in the wrong order": (
        N07, _wrap("XYSin", lambda right: type("Swapped", (right,), {"backward": staticmethod(
            lambda ctx, g: right.backward(ctx, g)[::-1])})),
        lambda m: m.step_5_two_inputs(CPU, 8), "closed form"),
    "07 ctx arguments: a backward that forgot the mask": (
        N07, _patch(lambda m: m.Clamp, "backward",
                    staticmethod(lambda ctx, g: (g, None, None))),
        lambda m: m.step_6_non_tensor_arguments(CPU, 8), "torch.clamp"),
    "07 ctx arguments: the Nones were not needed after all": (
        N07, _patch(lambda m: m.ClampForgotTheNones, "backward",
                    staticmethod(lambda ctx, g: (g, None, None))),
        lambda m: m.step_6_non_tensor_arguments(CPU, 8), "1 gradient for 3 inputs"),
    "07 apply: forward's torch ops recorded instead of our node": (
        N07, _patch(lambda m: m.MyReLU, "apply", staticmethod(torch.relu)),
        lambda m: m.step_7_why_apply(CPU, 4), "MyReLUBackward"),
    "07 clipped STE: forgot the clip": (
        N07, _patch(lambda m: m.ClippedSignSTE, "backward", staticmethod(lambda ctx, g: g)),
        lambda m: m.step_8_sign_ste_vs_clipped(CPU, 8), "hardtanh"),
    "07 clipped STE: passes the gradient at |x| == 1 too": (
        N07, _patch(lambda m: m.ClippedSignSTE, "backward", staticmethod(
            lambda ctx, g: g * (ctx.saved_tensors[0].abs() <= 1))),
        lambda m: m.step_8_sign_ste_vs_clipped(CPU, 8), "hardtanh"),
    "07 ctx arguments: a mask that includes the bounds": (
        N07, _patch(lambda m: m.Clamp, "backward", staticmethod(lambda ctx, g: (
            g * ((ctx.saved_tensors[0] >= ctx.lo) & (ctx.saved_tensors[0] <= ctx.hi)),
            None, None))),
        lambda m: m.step_6_non_tensor_arguments(CPU, 8), "torch.clamp"),
    # 08
    "08 defaults: float64 by default": (
        N08, lambda mod, mp: (mp.setattr(torch, "zeros", lambda *a, **k: torch.ones(
            *a, **k).double() * 0)), lambda m: m.step_1_creation(CPU), "defaults"),
    "08 views: a view() that copies": (
        N08, _patch(torch.Tensor, "view", lambda self, *shape: self.reshape(*shape).clone()),
        lambda m: m.step_2_views_and_copies(CPU), "view shares storage"),
    "08 view vs reshape: a view() that always works": (
        N08, _patch(torch.Tensor, "view", torch.Tensor.reshape),
        lambda m: m.step_3_view_vs_reshape(CPU), "raises RuntimeError"),
    "08 squeeze: squeeze() that drops only the first size-1 dim": (
        N08, _patch(torch.Tensor, "squeeze", lambda self, *dims: torch.squeeze(self, 0)),
        lambda m: m.step_4_shape_operations(CPU, 2, 3), "squeeze"),
    "08 permute: the axes reversed (CWH, not CHW)": (
        N08, _permute_reversed, lambda m: m.step_4_shape_operations(CPU, 2, 3), "permute"),
    "08 expand: an expand that copies": (
        N08, _expand_copies, lambda m: m.step_4_shape_operations(CPU, 2, 3), "stride 0"),
    "08 indexing: slices that copy": (
        N08, _clone_on_getitem, lambda m: m.step_5_indexing(CPU), "slicing returns a view"),
    "08 broadcasting: an add that never complains": (
        N08, _patch(torch, "add", lambda a, b: a.sum() + b.sum()),
        lambda m: m.step_6_broadcasting(CPU), "trailing sizes"),
    # 09
    "09 products: @ on mismatched shapes that does not raise": (
        N09, _patch(torch, "matmul", lambda a, b: a * b),
        lambda m: m.step_1_elementwise_vs_matrix_product(CPU), "inner sizes"),
    "09 mm: an mm that takes batches": (
        N09, _patch(torch, "mm", torch.matmul), lambda m: m.step_2_mm_matmul_bmm(CPU, 3),
        "2-D only"),
    "09 bmm: a batch multiplied in the wrong pairing": (
        N09, _patch(torch, "bmm", lambda a, b: torch.matmul(a, b.flip(0))),
        lambda m: m.step_2_mm_matmul_bmm(CPU, 3), "loop of mm"),
    "09 keepdim: a sum that ignores keepdim": (
        N09, _sum_ignores_keepdim, lambda m: m.step_3_reductions_keepdim(CPU), "keepdim"),
    "09 numpy: a from_numpy that copies": (
        N09, _patch(torch, "from_numpy", torch.tensor),
        lambda m: m.step_4_numpy_round_trip(CPU), "share memory"),
    "09 numpy: .numpy() that detaches for you": (
        N09, _numpy_detaches, lambda m: m.step_4_numpy_round_trip(CPU), "requires grad"),
    "09 same device: .to() that always copies": (
        N09, _patch(torch.Tensor, "to", lambda self, *a, **k: self.clone()),
        lambda m: m.step_5_same_result_on_device(CPU, 8), "same tensor"),
    "09 timing: launch-only timing (no synchronize)": (
        N09, _patch(lambda m: m, "time_matmul", lambda n, device, repeats: 1e-5 + n * 1e-9),
        lambda m: m.step_6_timed_matmul(CPU, 1e-4, 1), "twice as long"),
}


@pytest.mark.parametrize("case", list(BREAKS), ids=list(BREAKS))
def test_each_claim_fails_when_broken(note, monkeypatch, case, capsys):
    path, patch, run, match = BREAKS[case]
    mod = note(path)
    if patch is not None:
        patch(mod, monkeypatch)
    with pytest.raises(ClaimError, match=match):
        run(mod)


def test_00_no_gpu_claim_fails_if_cuda_tensors_could_be_made(note, monkeypatch):
    mod = note(N00)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the note checks that a CUDA tensor *can* be made")
    monkeypatch.setattr(torch, "ones", lambda *a, **k: torch.zeros(1))
    with pytest.raises(ClaimError, match="no usable GPU"):
        mod.step_1_environment(CPU)


def test_09_gpu_memory_claim_fails_if_the_tensor_stays_on_the_cpu(note, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the memory_allocated claim runs only on a GPU")
    mod = note(N09)
    monkeypatch.setattr(torch, "empty", lambda *shape, device=None: torch.zeros(*shape))
    with pytest.raises(ClaimError, match="memory_allocated"):
        mod.step_5_same_result_on_device(torch.device("cuda"), 8)


def test_every_step_of_every_autograd_note_is_broken_by_some_case():
    """The table above reaches every step function of every note (by name, in the lambdas)."""
    from pathlib import Path

    from conftest import REPO_ROOT, import_note

    covered = Path(__file__).read_text(encoding="utf-8")
    missing = []
    for path in sorted((REPO_ROOT / "autograd").glob("[0-9][0-9]_*.py")):
        mod = import_note(path)
        for name in dir(mod):
            if name.startswith("step_") and f"{name}(" not in covered:
                missing.append(f"{path.name}:{name}")
    assert not missing, missing
