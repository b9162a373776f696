"""``check()``: every claim a note teaches is proven while the reader watches.

A passing check prints one ``✓`` line with the claim and the measured error; a failing one
raises :class:`ClaimError` (a real ``raise``, so it also fails under ``python -O``).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

_passed: list[str] = []


class ClaimError(AssertionError):
    """A claim a note makes did not hold on this machine."""


def _mark(good: bool) -> str:
    symbol = "✓" if good else "✗"
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        symbol.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "OK" if good else "FAIL"
    return symbol


def _as_float64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()        # np.asarray(pil_image) is read-only; torch warns about those
    return torch.as_tensor(x, dtype=torch.float64)


def check(claim: str, actual, expected=None, *, atol: float = 0.0, rtol: float = 0.0,
          detail: str = ""):
    """Prove one claim, print a ``✓`` line, or raise :class:`ClaimError`.

    Two forms:

    * ``check("loss went down", last < first, detail="2.30 -> 0.41")``: ``actual`` is a
      condition; ``detail`` says what was measured.
    * ``check("autograd == hand gradient", grad, hand, atol=1e-6)``: ``actual`` and
      ``expected`` (tensors, arrays or numbers of the same shape) must agree within
      ``atol + rtol * max|expected|``; the line shows the largest absolute difference.

    Returns the condition (first form) or the measured max absolute error (second form).
    """
    if expected is None:
        if isinstance(actual, torch.Tensor):
            if actual.numel() != 1:
                raise TypeError(f"check({claim!r}): a condition must be one value; "
                                f"got a tensor of shape {tuple(actual.shape)}. Use .all().")
            actual = actual.item()
        ok = bool(actual)
        measured = f"  ({detail})" if detail else ""
        if not ok:
            raise ClaimError(f"{_mark(False)} {claim}: does not hold{measured}")
        print(f"{_mark(True)} {claim}{measured}")
        _passed.append(claim)
        return ok

    a, e = _as_float64(actual), _as_float64(expected)
    if a.shape != e.shape:
        raise ClaimError(f"{_mark(False)} {claim}: shapes differ, "
                         f"{tuple(a.shape)} vs expected {tuple(e.shape)}")
    extra = f"; {detail}" if detail else ""
    # Non-finite values (inf, nan) agree only where both sides hold the same one: inf - inf is
    # nan and rtol * inf is inf, so comparing them by difference would pass or fail by accident.
    a_bad, e_bad = ~torch.isfinite(a), ~torch.isfinite(e)
    same_bad = a_bad & e_bad & ((a == e) | (a.isnan() & e.isnan()))
    if bool((a_bad | e_bad).ne(same_bad).any()):
        where = tuple(int(i) for i in torch.nonzero((a_bad | e_bad) & ~same_bad)[0].tolist())
        raise ClaimError(f"{_mark(False)} {claim}: non-finite value at index {where}: "
                         f"{a[where].item()} vs expected {e[where].item()}{extra}")
    finite = ~(a_bad | e_bad)
    err = (a - e)[finite].abs().max().item() if finite.any() else 0.0
    tol = atol + rtol * (e[finite].abs().max().item() if finite.any() else 0.0)
    if math.isnan(err) or err > tol:
        raise ClaimError(f"{_mark(False)} {claim}: max |error| = {err:.3g} > tolerance "
                         f"{tol:.3g}{extra}")
    print(f"{_mark(True)} {claim}  (max |error| = {err:.2g}, tolerance {tol:.2g}{extra})")
    _passed.append(claim)
    return err


def check_raises(claim: str, exc_type: type[BaseException], fn, *args, match: str = "",
                 **kwargs) -> str:
    """Prove that ``fn(*args, **kwargs)`` raises ``exc_type`` whose message contains ``match``.

    Prints a ``✓`` line with the start of the message and returns the whole message.
    """
    try:
        fn(*args, **kwargs)
    except exc_type as err:
        message = str(err)
    else:
        raise ClaimError(f"{_mark(False)} {claim}: no {exc_type.__name__} was raised")
    if match not in message:
        raise ClaimError(f"{_mark(False)} {claim}: {exc_type.__name__} raised, but its message "
                         f"lacks {match!r}: {message[:200]}")
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    short = first_line if len(first_line) <= 70 else first_line[:67] + "..."
    print(f"{_mark(True)} {claim}  ({exc_type.__name__}: {short})")
    _passed.append(claim)
    return message


def passed_claims() -> list[str]:
    """Claims proven so far in this process (the smoke tests count them)."""
    return list(_passed)


def reset_claims() -> None:
    _passed.clear()
