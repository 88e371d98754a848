"""HuberLoss against torch's own F.huber_loss (values and gradients), gradcheck, limits, the
registry, and the classic masking bug."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from huberfit.losses import LOSSES, HuberLoss, build_loss, huber_reference

DELTAS = [0.1, 0.5, 1.0, 2.0, 10.0]
DTYPES = [torch.float32, torch.float64]


def _inputs(dtype, delta, n=257):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(n, 1, generator=g, dtype=dtype) * 3 * delta
    true = torch.randn(n, 1, generator=g, dtype=dtype) * 3 * delta
    # residuals exactly at 0 and at +-delta
    k = min(n, 3)
    true[:k] = pred[:k] - torch.tensor([[0.0], [delta], [-delta]], dtype=dtype)[:k]
    return pred, true


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_values_and_gradients_equal_torch(dtype, delta, reduction):
    pred, true = _inputs(dtype, delta)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    p1, t1 = pred.clone().requires_grad_(), true.clone().requires_grad_()
    p2, t2 = pred.clone().requires_grad_(), true.clone().requires_grad_()
    ours = HuberLoss(delta, reduction)(p1, t1)
    ref = F.huber_loss(p2, t2, delta=delta, reduction=reduction)
    torch.testing.assert_close(ours, ref, **tol)
    w = torch.randn_like(ref) if reduction == "none" else None
    g1 = torch.autograd.grad(ours, (p1, t1), w)
    g2 = torch.autograd.grad(ref, (p2, t2), w)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_rows_give_what_torch_gives(reduction):
    p1, p2 = (torch.empty(0, 1, requires_grad=True) for _ in range(2))
    true = torch.empty(0, 1)
    ours, ref = HuberLoss(1.0, reduction)(p1, true), F.huber_loss(p2, true, reduction=reduction)
    torch.testing.assert_close(ours, ref, equal_nan=True)
    ours.sum().backward()
    assert p1.grad is not None and p1.grad.shape == (0, 1)


def test_sizes_and_reductions_in_turn_keep_their_own_values():
    """The loss's weights are kept for the last size and reduction: alternating them
    (a batch, the validation rows, a sum) must not reuse the wrong ones."""
    for n, reduction in [(257, "mean"), (31, "mean"), (257, "sum"), (31, "mean"), (257, "mean")]:
        pred, true = _inputs(torch.float64, 1.0, n)
        ours = HuberLoss(1.0, reduction)(pred, true)
        ref = F.huber_loss(pred, true, delta=1.0, reduction=reduction)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("delta", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(delta, reduction):
    pred, true = _inputs(torch.float64, delta, n=31)
    # gradcheck's finite differences need residuals away from the kink at +-delta
    pred, true = pred[3:].requires_grad_(), true[3:].requires_grad_()
    assert torch.autograd.gradcheck(lambda p, t: HuberLoss(delta, reduction)(p, t), (pred, true))


def test_fast_path_equals_readable_reference():
    for delta in DELTAS:
        pred, true = _inputs(torch.float64, delta)
        p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        a, b = HuberLoss(delta)(p1, true), huber_reference(p2, true, delta)
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
        a.backward()
        b.backward()
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 2, 257, 1000, 65536, 100_003])
def test_gradient_is_torchs_bit_for_bit(dtype, reduction, n):
    """The gradient is ``clamp(y_pred - y_true)`` times ``1/n`` (mean), each rounded once in
    the dtype, which is what torch's ``huber_loss_backward`` computes: equal, not close.

    Only for a delta the dtype holds exactly: torch's kernel rounds ``delta`` to the dtype
    in its vectorized loop but multiplies by the double in its scalar one (the last
    elements, and where threads split the work), so for ``delta=0.3`` in float32 torch's
    own clamped gradients differ by an ulp from one element to another; ours are all the
    vectorized loop's."""
    for delta in (0.375, 1.0, 2.5):
        pred, true = _inputs(dtype, delta, n)
        p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        HuberLoss(delta, reduction)(p1, true).backward()
        F.huber_loss(p2, true, delta=delta, reduction=reduction).backward()
        assert torch.equal(p1.grad, p2.grad)
    pred, true = _inputs(dtype, 0.3, n)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    HuberLoss(0.3, reduction)(p1, true).backward()
    F.huber_loss(p2, true, delta=0.3, reduction=reduction).backward()
    ulp = torch.finfo(dtype).eps * p2.grad.abs()
    assert ((p1.grad - p2.grad).abs() <= ulp).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_second_derivatives_like_torch(reduction):
    """``create_graph=True`` gives a gradient autograd can differentiate again, as
    ``F.huber_loss``'s (gradgradcheck, and the Hessian-vector product compared)."""
    pred, true = _inputs(torch.float64, 1.0, n=31)
    p, t = pred[3:].clone().requires_grad_(), true[3:].clone().requires_grad_()

    def total(loss):
        return loss.sum() if reduction == "none" else loss

    assert torch.autograd.gradgradcheck(lambda a, b: HuberLoss(1.0, reduction)(a, b), (p, t))
    hv = []
    for loss in (HuberLoss(1.0, reduction)(p, t), F.huber_loss(p, t, reduction=reduction)):
        (g,) = torch.autograd.grad(total(loss), p, create_graph=True)
        hv.append(torch.autograd.grad((g * torch.arange(28.0).view(-1, 1)).sum(), (p, t)))
    for a, b in zip(*hv, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_second_backward_with_retain_graph(reduction):
    pred, true = _inputs(torch.float32, 1.0)
    p = pred.clone().requires_grad_()
    loss = HuberLoss(reduction=reduction)(p, true)
    (g1,) = torch.autograd.grad(loss, p, retain_graph=True)
    g1 = g1.clone()
    (g2,) = torch.autograd.grad(loss, p)
    assert torch.equal(g1, g2)


def test_sum_and_grad_equals_autograd():
    for name in LOSSES:
        loss_fn = build_loss(name, 0.7)
        pred, true = _inputs(torch.float64, 0.7)
        p = pred.clone().requires_grad_()
        expected = loss_fn(p, true) * len(p)
        expected.backward()
        value, grad = loss_fn.sum_and_grad(pred.clone().reshape(-1), true.reshape(-1))
        grad = grad.reshape(-1, 1)
        torch.testing.assert_close(value, expected.detach(), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(grad, p.grad, rtol=1e-13, atol=1e-15)


def test_large_delta_is_half_mse_and_small_delta_tends_to_l1():
    pred, true = _inputs(torch.float64, 1.0)
    big = HuberLoss(1e6)(pred, true)
    torch.testing.assert_close(big, 0.5 * F.mse_loss(pred, true), rtol=1e-14, atol=0)
    l1 = F.l1_loss(pred, true)
    gaps = [abs(float(HuberLoss(d)(pred, true) / d - l1)) for d in (1e-1, 1e-2, 1e-3, 1e-4)]
    assert all(b < a for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 1e-3


def test_huber_is_delta_times_smooth_l1():
    pred, true = _inputs(torch.float64, 2.0)
    for d in DELTAS:
        torch.testing.assert_close(
            HuberLoss(d)(pred, true), d * F.smooth_l1_loss(pred, true, beta=d), rtol=1e-13, atol=0
        )


def test_nan_in_nan_out():
    pred, true = _inputs(torch.float64, 1.0)
    pred[5, 0] = math.nan
    p = pred.requires_grad_()
    loss = HuberLoss()(p, true)
    assert math.isnan(loss.item())
    loss.backward()
    assert math.isnan(float(p.grad[5, 0]))
    assert math.isnan(float(HuberLoss(reduction="none")(pred, true)[5, 0]))


def test_broadcasting_warns_like_torch():
    pred = torch.randn(6, 1)
    true = torch.randn(6)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        a = HuberLoss(reduction="none")(pred, true)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        b = F.huber_loss(pred, true, reduction="none")
    assert a.shape == b.shape == (6, 6)
    torch.testing.assert_close(a, b)
    assert len(ours) == 1 and len(theirs) == 1
    assert str(ours[0].message) == str(theirs[0].message)
    with pytest.raises(RuntimeError):
        HuberLoss()(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        F.huber_loss(torch.randn(3, 2), torch.randn(4, 2))


def test_reduction_none_needs_a_scalar_for_backward():
    p = torch.randn(4, 1, requires_grad=True)
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar"):
        HuberLoss(reduction="none")(p, torch.zeros(4, 1)).backward()


@pytest.mark.parametrize("delta", [0.0, -1.0, math.inf, math.nan])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match="delta"):
        HuberLoss(delta)


def test_bad_reduction_and_unknown_loss():
    with pytest.raises(ValueError, match="'avg'"):
        HuberLoss(1.0, "avg")
    with pytest.raises(ValueError, match="huber, mse, l1"):
        build_loss("hubber")


def test_registry_builds_the_custom_module():
    assert isinstance(build_loss("huber", 2.0), HuberLoss)
    assert build_loss("huber", 2.0).delta == 2.0
    assert set(LOSSES) == {"huber", "mse", "l1", "quantile"}
    assert build_loss("quantile", quantile=0.9).quantile == 0.9


def _mask_huber_with_bug(pred, true, delta):
    """The original exercise's version: a float mask, and `1 - error` where the complement
    mask `1 - mask` was meant."""
    error = true - pred
    mask = (error.abs() <= delta).float()
    small = 0.5 * error**2
    large = delta * (error.abs() - 0.5 * delta)
    return (mask * small + (1 - error) * large).mean()


def test_the_masking_bug_is_wrong_and_not_in_the_registry():
    pred, true = _inputs(torch.float64, 1.0)
    huber = build_loss("huber", 1.0)
    buggy = _mask_huber_with_bug(pred, true, 1.0)
    assert not torch.isclose(buggy, F.huber_loss(pred, true), rtol=1e-3)
    assert not torch.isclose(huber(pred, true), buggy, rtol=1e-3)  # the registry's is not it
    # with large residuals the bug runs off to -inf, then nan once inf meets 0 * inf; the
    # registry's Huber stays finite and equal to torch's
    zeros = torch.zeros(4, 1, dtype=torch.float64)
    big = torch.tensor([[1e200], [0.0], [2.0], [3.0]], dtype=torch.float64)
    assert not math.isfinite(float(_mask_huber_with_bug(zeros, big, 1.0)))
    assert math.isfinite(float(huber(zeros, big)))
    torch.testing.assert_close(huber(zeros, big), F.huber_loss(zeros, big), rtol=1e-15, atol=0)
    for name in LOSSES:
        loss = build_loss(name, 1.0)
        torch.testing.assert_close(
            loss(pred, true),
            {
                "huber": F.huber_loss,
                "mse": F.mse_loss,
                "l1": F.l1_loss,
                "quantile": lambda p, t: 0.5 * F.l1_loss(p, t),
            }[name](pred, true),  # tau 0.5
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40),
    st.floats(1e-3, 1e3),
)
def test_property_matches_torch(values, delta):
    pred = torch.tensor(values, dtype=torch.float64).reshape(-1, 1)
    true = torch.zeros_like(pred)
    torch.testing.assert_close(
        HuberLoss(delta)(pred, true), F.huber_loss(pred, true, delta=delta), rtol=1e-12, atol=1e-12
    )


def test_device_dtype_follow_the_input():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in DTYPES:
            p = torch.randn(10, 1, dtype=dtype, device=device, requires_grad=True)
            loss = HuberLoss()(p, torch.zeros(10, 1, dtype=dtype, device=device))
            loss.backward()
            assert loss.dtype == dtype and p.grad.device.type == device
