"""huberfit's optimizers and schedules against torch.optim as the oracle."""

from __future__ import annotations

import pytest
import torch

from huberfit import optim

CASES = [
    ("sgd", dict(lr=0.1), dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01),
     dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=0.01), dict(lr=0.01)),
    ("adam", dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, decoupled=True), dict(lr=0.01, weight_decay=0.1)),
]  # fmt: skip


def _make(name, ours, params):
    if name == "sgd":
        return optim.SGD(params, **ours)
    return optim.Adam(params, **ours)


def _torch(name, kw, params):
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](
        params, **kw
    )


@pytest.mark.parametrize("name, ours, theirs", CASES)
def test_updates_equal_torch_optim(name, ours, theirs):
    g = torch.Generator().manual_seed(0)
    init = [
        torch.randn(1, 5, generator=g, dtype=torch.float64),
        torch.randn(1, generator=g, dtype=torch.float64),
    ]
    a = [p.clone().requires_grad_() for p in init]
    b = [p.clone().requires_grad_() for p in init]
    opt_a, opt_b = _make(name, ours, a), _torch(name, theirs, b)
    for _ in range(25):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in init]
        for params, opt in ((a, opt_a), (b, opt_b)):
            for p, gr in zip(params, grads, strict=True):
                p.grad = gr.clone()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_plain_sgd_is_torch_sgd_bit_for_bit(foreach):
    """Plain SGD's one foreach add against torch.optim.SGD's own kernels, with a parameter
    that has no gradient on some steps (it must stay as it is)."""
    g = torch.Generator().manual_seed(2)
    init = [torch.randn(1, 7, generator=g), torch.randn(1, generator=g)]
    a = [p.clone().requires_grad_() for p in init]
    b = [p.clone().requires_grad_() for p in init]
    ours, theirs = optim.SGD(a, lr=0.05), torch.optim.SGD(b, lr=0.05, foreach=foreach)
    for step in range(20):
        grads = [torch.randn(p.shape, generator=g) for p in init]
        for params, opt in ((a, ours), (b, theirs)):
            for i, (p, gr) in enumerate(zip(params, grads, strict=True)):
                p.grad = None if (i == 1 and step % 3 == 0) else gr.clone()
            opt.step()
    for pa, pb in zip(a, b, strict=True):
        assert torch.equal(pa, pb)


def test_state_dict_round_trip_continues_identically():
    g = torch.Generator().manual_seed(1)
    p1 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    p2 = p1.detach().clone().requires_grad_()
    o1 = optim.Adam([p1], lr=0.1)
    grads = [torch.randn(3, generator=g, dtype=torch.float64) for _ in range(6)]
    for gr in grads[:3]:
        p1.grad = gr.clone()
        o1.step()
    with torch.no_grad():
        p2.copy_(p1)
    o2 = optim.Adam([p2], lr=0.1)
    o2.load_state_dict(o1.state_dict())
    for gr in grads[3:]:
        for p, o in ((p1, o1), (p2, o2)):
            p.grad = gr.clone()
            o.step()
    assert torch.equal(p1, p2)


def test_schedules_equal_torch():
    p = [torch.zeros(1, requires_grad=True)]
    for ours, theirs in (
        (lambda o: optim.CosineLR(o, 20, 0.001), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 20, 0.001)),
        (lambda o: optim.StepLR(o, 4, 0.3), lambda o: torch.optim.lr_scheduler.StepLR(o, 4, 0.3)),
    ):  # fmt: skip
        oa, ob = optim.SGD(p, lr=0.5), torch.optim.SGD(p, lr=0.5)
        sa, sb = ours(oa), theirs(ob)
        for _ in range(20):
            ob.step()
            sa.step()
            sb.step()
            assert oa.param_groups[0]["lr"] == pytest.approx(
                ob.param_groups[0]["lr"], rel=1e-12, abs=1e-15
            )
