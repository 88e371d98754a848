"""The training loop: ``fit(model, loss_fn, batches, optimizer, sinks, ...)``.

``fit`` builds nothing itself: it receives the model, the loss, a ``BatchSource``, the
optimizer (and scheduler), the sinks and an ``evaluate`` callback, so it can be tested with
fakes and a new sink or batch source never touches it. It knows nothing about files, configs
or standardization; losses it reports are multiplied by ``settings.loss_scale`` to put them
in original units. Imports only the ``BatchSource`` protocol (for its type) and ``Batch``
from data; must not import losses, model or sinks.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from huberfit.data.batches import Batch
from huberfit.finish import simplex_finish

if TYPE_CHECKING:
    from huberfit.data.batches import BatchSource

LBFGS_OBJECTIVE_SCALE = 1e8
# Losses with a kink (l1, quantile) under L-BFGS: the kink is rounded over SMOOTHING_START
# (standardized target units) in the first epoch and ten times less each epoch after, to
# SMOOTHING_END; then the exact finish: a vertex, and simplex pivots to an optimal one
# (see _Run.finish_vertex and huberfit.finish).
SMOOTHING_START, SMOOTHING_END = 1.0, 1e-9
# A mini-batch step on at most this many numbers (rows x (features + 1)) runs on one
# thread (see step_threads); its rows are still gathered on every thread. Measured on a
# 2-core Xeon, 1M x 16 rows, epochs side by side: batch 256 (4,352 numbers a step) 121 ms
# on one thread, 138 ms on two; batch 4096 (69,632) alike (55.3 ms on one, 56.6 ms on two,
# medians of 15), and so are batches of 8192 and 32768 rows. On one thread a step never
# waits for the other core (MKL's hand-off cost ~700 us a call when that core was busy).
SMALL_STEP = 2**17

# ----------------------------------------------------------------------------- results


@dataclass
class FitSettings:
    epochs: int
    grad_accum_steps: int = 1
    log_every_steps: int = 10
    early_stopping_patience: int | None = None
    loss_scale: float = 1.0  # training-units loss * loss_scale = original-units loss
    fused: bool = True  # closed-form gradients for nn.Linear + a loss with sum_and_grad
    zero_grad: bool = True  # False: .grad keeps adding up across steps (the classic mistake)


@dataclass
class TrainState:
    """Where training is: everything a checkpoint needs to continue bit-exactly."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # micro-batches already done in the current epoch
    step: int = 0  # optimizer steps taken so far
    epoch_loss_sum: float = 0.0  # of the current epoch, in training units, sample-weighted
    epoch_count: int = 0
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    last_finite_loss: float | None = None
    lbfgs_stalls: int = 0
    prev_lbfgs: float | None = None  # the last epoch's L-BFGS objective (for lbfgs_stalls)
    smoothing: float | None = None  # the current rounding of a kinked loss (L-BFGS)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


@dataclass
class EpochReport:
    epoch: int  # 1-based
    step: int
    train_loss: float  # original units
    val: dict[str, float] | None
    params: dict[str, float]
    lr: float
    grad_norm: float
    samples_per_second: float
    seconds: float
    residuals: Any = None  # validation residuals, original units (for histograms)


@dataclass
class FitResult:
    status: str  # completed | early_stopped | diverged | interrupted
    state: TrainState
    last: EpochReport | None
    seconds: float
    samples: int
    message: str = ""
    history: list[EpochReport] = field(default_factory=list)


class Sink(Protocol):
    def step(self, step: int, train_loss: float) -> None: ...
    def epoch(self, report: EpochReport) -> None: ...


# evaluate(model) -> (val metrics or None, params, val residuals or None), original units
Evaluate = Callable[[nn.Module], tuple[dict[str, float] | None, dict[str, float], Any]]


class Reducer(Protocol):
    """Sums over processes (see ``huberfit.distributed.Dist``)."""

    def sum_(self, tensor: torch.Tensor) -> None: ...
    def any(self, flag: bool) -> bool: ...


class Diverged(Exception):
    pass


# ----------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    loss_fn: nn.Module,
    batches: BatchSource,
    optimizer: Any,
    sinks: Sink,
    settings: FitSettings,
    evaluate: Evaluate,
    scheduler: Any = None,
    state: TrainState | None = None,
    stop: threading.Event | None = None,
    reducer: Reducer | None = None,
    on_epoch: Callable[[TrainState], None] | None = None,
) -> FitResult:
    """Train until ``settings.epochs``, early stopping, divergence or ``stop`` is set.

    ``evaluate(model)`` returns ``(val_metrics or None, params, residuals)`` in original units; val
    metrics hold at least ``loss``. On divergence the result's status is ``diverged`` and its
    message says where; on ``stop`` the current step is finished and the status is
    ``interrupted``. With a ``reducer`` (several processes, each with a sharded batch
    source), gradients and losses are summed over processes every step, and the processes
    agree on stopping, so they all take the same steps. ``on_epoch(state)`` is called after
    each epoch that training continues past (the periodic checkpoint; never per step).
    """
    state = state or TrainState()
    stop = stop or threading.Event()
    run = _Run(model, loss_fn, batches, optimizer, sinks, settings, evaluate, scheduler, state)
    run.reducer = reducer
    status, message = "completed", ""
    start = time.perf_counter()
    plan, settle = getattr(batches, "plan", None), getattr(batches, "settle", None)
    if plan is not None:  # a source that gathers the next epoch ahead stops at the last
        plan(settings.epochs)
    try:
        if state.epoch < settings.epochs and run.stop_agreed(stop):  # asked before any step
            status = "interrupted"
        while status != "interrupted" and state.epoch < settings.epochs:
            report = run.lbfgs_epoch() if run.is_lbfgs else run.epoch(stop)
            if report is None:  # stopped mid-epoch
                status = "interrupted"
                break
            if run.early_stop(report):
                status = "early_stopped"
                message = (
                    f"early stopping: no better validation loss for "
                    f"{settings.early_stopping_patience} epochs (best: epoch {state.best_epoch})"
                )
                break
            if run.converged():
                message = run.message or "L-BFGS converged: the objective stopped falling"
                message += f" (epoch {state.epoch} of {settings.epochs})"
                break
            if run.stop_agreed(stop):
                status = "interrupted"
                break
            if on_epoch is not None:
                on_epoch(state)
    except Diverged as exc:
        status, message = "diverged", str(exc)
    finally:
        if settle is not None:  # no thread of the source's outlives training
            settle()
    seconds = time.perf_counter() - start
    return FitResult(status, state, run.last, seconds, run.samples, message, run.history)


class _Run:
    """The state of one ``fit`` call; split from ``fit`` to keep each piece short."""

    def __init__(self, model, loss_fn, batches, optimizer, sinks, settings, evaluate, sched, state):
        self.grads: _FusedGrads | None = None
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        self.opt, self.sinks, self.settings = optimizer, sinks, settings
        self.evaluate, self.scheduler, self.state = evaluate, sched, state
        self.is_lbfgs = isinstance(optimizer, torch.optim.LBFGS)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.on_cpu = batches.device.type == "cpu"
        self.fused = (
            settings.fused
            and type(model) is nn.Linear
            and hasattr(loss_fn, "sum_and_grad")
            and all(p.requires_grad for p in model.parameters())
        )
        self.samples = 0
        self.last: EpochReport | None = None
        self.history: list[EpochReport] = []
        self.reducer: Reducer | None = None
        self.message = ""
        self.smooth = self.is_lbfgs and hasattr(loss_fn, "smoothing")
        if self.smooth:
            state.smoothing = SMOOTHING_START if state.smoothing is None else state.smoothing
            loss_fn.smoothing = state.smoothing

    # -- mini-batch optimizers --------------------------------------------------------

    def epoch(self, stop: threading.Event) -> EpochReport | None:
        # the fused path needs no autograd graph: one no_grad for the epoch, not per step
        with torch.no_grad() if self.fused else contextlib.nullcontext(), self._threads():
            return self._epoch(stop)

    def _threads(self) -> contextlib.AbstractContextManager:
        rows = getattr(self.batches, "batch_size", None) or self.batches.n
        width = self.model.weight.numel() if isinstance(self.model, nn.Linear) else SMALL_STEP
        if not self.batches.in_memory:  # streamed: the other cores read and shuffle
            return step_threads(self.batches.device, 0)
        return step_threads(self.batches.device, rows * (width + 1))

    def _epoch(self, stop: threading.Event) -> EpochReport | None:
        """The steps of one epoch. Per step only the update itself runs, and on the CPU one
        read of the step's loss (free there). On an accelerator nothing is read back
        within the epoch: each log interval's mean loss stays on the device until the
        epoch ends (or stops), then all are read at once, checked and logged in order."""
        s, st = self.settings, self.state
        t0, seen = time.perf_counter(), 0
        k = s.grad_accum_steps
        device_sum = None if self.on_cpu else torch.zeros((), device=self.batches.device)
        log_sum, log_n, log_sum_t = 0.0, 0, None
        pending: list[tuple[int, torch.Tensor]] = []  # accelerators: (step, mean loss)
        grad_norm: Any = math.nan
        items = self.batches.epoch(st.epoch, st.batch)
        self.grads = _FusedGrads(self.model, self.batches.take) if self.fused else None
        try:
            for window, n_win, last_window in _windows(items, k):
                win_loss = self._accumulate(window, n_win)  # float on the CPU, else a tensor
                if self.reducer is not None:
                    win_loss = self._sum_over_ranks(win_loss)
                at_log = (st.step + 1) % s.log_every_steps == 0 or last_window
                if last_window:
                    grad_norm = _grad_norm(self.params)
                self.opt.step()
                if s.zero_grad and self.grads is None:  # fused: the next window overwrites
                    self.opt.zero_grad(set_to_none=True)
                st.step += 1
                st.batch += len(window)
                seen += n_win
                st.epoch_count += n_win
                if self.on_cpu:  # a host read is free here: check every step
                    self._check_finite(win_loss)
                    st.epoch_loss_sum += win_loss * n_win
                    log_sum, log_n = log_sum + win_loss, log_n + 1
                    if at_log:
                        self._check_finite(log_sum / log_n)
                        self.sinks.step(st.step, log_sum / log_n * s.loss_scale)
                        log_sum, log_n = 0.0, 0
                else:
                    device_sum += win_loss * n_win
                    log_sum_t = win_loss if log_sum_t is None else log_sum_t + win_loss
                    log_n += 1
                    if at_log:
                        pending.append((st.step, log_sum_t / log_n))
                        log_sum_t, log_n = None, 0
                if not last_window and self._stop_now(stop, at_log):
                    self._read_device(device_sum, pending)
                    self.samples += seen
                    return None
        finally:
            items.close()
            if self.grads is not None:
                self.grads.release(keep=not s.zero_grad)
        self._read_device(device_sum, pending)
        self.samples += seen
        return self._end_epoch(seen, time.perf_counter() - t0, float(grad_norm))

    def _stop_now(self, stop: threading.Event, at_log: bool) -> bool:
        """One process: Ctrl-C is seen after any step. Several: they agree at log steps,
        so that all of them stop after the same step."""
        if self.reducer is None:
            return stop.is_set()
        return at_log and self.reducer.any(stop.is_set())

    def stop_agreed(self, stop: threading.Event) -> bool:
        return stop.is_set() if self.reducer is None else self.reducer.any(stop.is_set())

    def _sum_over_ranks(self, win_loss: Any) -> Any:
        """One all-reduce per step: every gradient and this rank's part of the window's mean
        loss, packed in one flat tensor, summed over ranks, unpacked into ``.grad``."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        loss = torch.as_tensor(win_loss, dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1)])
        self.reducer.sum_(flat)
        offset = 0
        for p in self.params:
            summed = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = summed
            else:  # the fused path's gradients are views of one buffer: keep them
                p.grad.copy_(summed)
            offset += p.numel()
        return float(flat[-1]) if self.on_cpu else flat[-1]

    def _accumulate(self, window: list[tuple[Any, int]], n_win: int) -> Any:
        """Backward through each micro-batch, weighted by its share of the window's samples,
        so the summed gradient is the gradient of the mean loss over the whole window.
        Returns the window's mean loss: a float on the CPU, a device tensor elsewhere."""
        total: Any = 0.0 if self.on_cpu else None
        fresh = self.settings.zero_grad  # fused: the window's first gradient overwrites
        for item, _ in window:
            if self.grads is not None:
                loss, scale = self.grads.backward(self.loss_fn, item, n_win, fresh)
                if loss is None:  # a rank's share of a batch smaller than the world
                    continue
                fresh = False
            else:
                xb, yb = self.batches.take(item)  # item: a Batch, indices, or the rows
                if xb.shape[0] == 0:
                    continue
                weight = xb.shape[0] / n_win
                loss, scale = self.loss_fn(self.model(xb), yb), weight
                (loss * weight if weight != 1.0 else loss).backward()
                loss = loss.detach()
            if self.on_cpu:
                total += loss.item() * scale
            else:
                total = loss * scale if total is None else total + loss * scale
        if fresh and self.grads is not None:  # no rows here in this window: no gradient
            self.grads.flat.zero_()
        if total is None:
            total = torch.zeros((), device=self.batches.device)
        return total

    def _read_device(self, device_sum: torch.Tensor | None, pending: list) -> None:
        """Accelerators: the epoch's loss sum and its log intervals' means, read in one
        host sync, then checked and logged in step order."""
        if device_sum is None:
            return
        values = torch.stack([device_sum, *(m for _, m in pending)]).tolist()
        for (step, _), mean in zip(pending, values[1:], strict=True):
            self._check_finite(mean, step)
            self.sinks.step(step, mean * self.settings.loss_scale)
        self._check_finite(values[0] / max(self.state.epoch_count, 1))
        self.state.epoch_loss_sum += values[0]

    def _check_finite(self, value: float, step: int | None = None) -> None:
        st = self.state
        if math.isfinite(value):
            st.last_finite_loss = value * self.settings.loss_scale
            return
        lr = self.opt.param_groups[0]["lr"]
        last = "none" if st.last_finite_loss is None else f"{st.last_finite_loss:.6g}"
        raise Diverged(
            f"training diverged at epoch {st.epoch + 1}, step {step or st.step}: the loss became "
            f"{value} (last finite loss {last}, optimizer.lr={lr:g}); try a smaller optimizer.lr"
        )

    # -- full-batch L-BFGS ------------------------------------------------------------

    def lbfgs_epoch(self) -> EpochReport:
        """One ``LBFGS.step``: up to ``max_iter`` iterations with strong-Wolfe line search."""
        t0 = time.perf_counter()
        n = self.batches.n

        def objective(backward: bool) -> torch.Tensor:
            """The mean loss over all rows (all processes), chunk by chunk."""
            total = None
            for Xc, yc in self.batches.full_chunks():
                # torch's LBFGS skips curvature pairs with s.y <= 1e-10 (absolute), which
                # freezes it near the optimum of an O(1) objective; scaling the objective
                # (L-BFGS is otherwise invariant to it) moves that threshold out of the way.
                loss = self.loss_fn(self.model(Xc), yc) * (Xc.shape[0] / n * LBFGS_OBJECTIVE_SCALE)
                if backward:
                    loss.backward()
                total = loss.detach() if total is None else total + loss.detach()
            if self.reducer is not None:  # every rank then takes the same L-BFGS step
                total = torch.as_tensor(self._sum_over_ranks(total), dtype=total.dtype)
            return total

        def closure() -> torch.Tensor:
            self.opt.zero_grad(set_to_none=True)
            return objective(backward=True)

        self.opt.step(closure)
        st = self.state
        st.step += 1
        with torch.no_grad(), self._exact_loss():
            value = float(objective(backward=False)) / LBFGS_OBJECTIVE_SCALE
        self._check_finite(value)
        for p in self.params:
            if not torch.isfinite(p).all():
                self._check_finite(math.nan)
        st.epoch_loss_sum, st.epoch_count = value * n, n
        self.sinks.step(st.step, value * self.settings.loss_scale)
        self.samples += n
        closure()
        grad_norm = float(_grad_norm(self.params)) / LBFGS_OBJECTIVE_SCALE
        self.opt.zero_grad(set_to_none=True)
        return self._end_epoch(n, time.perf_counter() - t0, grad_norm)

    @contextlib.contextmanager
    def _exact_loss(self):
        """The loss without its smoothing, for what is reported."""
        if not self.smooth:
            yield
            return
        self.loss_fn.smoothing = 0.0
        try:
            yield
        finally:
            self.loss_fn.smoothing = self.state.smoothing

    def converged(self) -> bool:
        """L-BFGS only: stop once two epochs in a row no longer lower the objective at all.

        torch's own stopping tests (and the fixed tolerance inside its strong-Wolfe search)
        fire 1e-4..1e-3 short of the optimum on real data; repeating the step until the
        objective stalls at the dtype's precision reaches it. A kinked loss instead lowers
        its smoothing each epoch and ends with the exact vertex (``finish_vertex``).
        """
        if not self.is_lbfgs or self.last is None:
            return False
        if self.smooth:
            return self._lower_smoothing()
        value = self.last.train_loss
        prev, self.state.prev_lbfgs = self.state.prev_lbfgs, value
        if prev is None:
            return False
        self.state.lbfgs_stalls = self.state.lbfgs_stalls + 1 if value >= prev else 0
        if self.state.lbfgs_stalls < 2:
            return False
        if hasattr(self.loss_fn, "curvature") and self.reducer is None:
            self.message = self.finish_newton()
        elif getattr(self.batches, "in_memory", False) and self.reducer is None:
            self.message = self.finish_newton_autograd()  # your own loss
        return True

    def _lower_smoothing(self) -> bool:
        """One smoothing level per epoch; after the last, the exact finish."""
        st = self.state
        if st.smoothing > SMOOTHING_END * 1.5:
            st.smoothing /= 10
            self.loss_fn.smoothing = st.smoothing
            self.opt.state.clear()  # the curvature pairs describe the previous smoothing
            return False
        self.message = self.finish_vertex()
        return True

    @torch.no_grad()
    def finish_vertex(self) -> str:
        """1. The rows nearest the fit: an optimum of a loss made of linear pieces passes
        exactly through as many rows as the model has parameters, and once the smoothing is
        small those are (nearly) the rows it nearly interpolates. 2. The vertex through
        ``p`` linearly independent ones, in float64. 3. In memory: simplex pivots from
        there to an optimal vertex (``finish.simplex_finish``). 4. Kept unless it raises
        the objective beyond rounding."""
        if self.reducer is not None:
            return "L-BFGS on the smoothed loss (several processes: no exact finish)"
        W, b = self.model.weight, self.model.bias
        p = W.numel() + (b is not None)
        pool = max(64 * p, 512)  # candidates: ties (repeated rows) can make some dependent
        in_memory = getattr(self.batches, "in_memory", False)
        A, y = self._rows64() if in_memory else self._nearest_rows64(pool)
        near = torch.argsort((y - A @ self._beta64()).abs(), stable=True)[:pool]
        basis = near[_independent_rows(A[near], p)]
        if len(basis) < p:
            return "L-BFGS on the smoothed loss; its nearest rows determine no vertex"
        tau = float(getattr(self.loss_fn, "quantile", 0.5))
        if in_memory:
            beta, pivots, optimal = simplex_finish(A, y, tau, basis)
            how = f"{pivots} simplex pivot{'s' * (pivots != 1)} to an optimal vertex"
            if not optimal:
                how = f"{pivots} simplex pivots, stopped short of an optimal vertex"
        else:
            beta, how = (
                torch.linalg.solve(A[basis], y[basis]),
                "the vertex through the nearest rows",
            )
        if not self._keep_if_not_higher(beta):
            return f"L-BFGS on the smoothed loss; the exact finish ({how}) was no better, kept"
        return (
            f"L-BFGS, kink smoothed {SMOOTHING_START:g} to {SMOOTHING_END:g} (x0.1 an epoch), "
            f"then exact: {how}"
        )

    def _rows64(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All of this process's rows as a float64 CPU design (a column of ones last when
        the model has an intercept) and target."""
        chunks = [(self._design64(X), y.cpu().double()) for X, y in self.batches.full_chunks()]
        As, ys = zip(*chunks, strict=True)
        return torch.cat(As), torch.cat(ys).reshape(-1)

    def _nearest_rows64(self, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Streamed: the ``pool`` rows of each chunk nearest the fit (bounded memory)."""
        As, ys = [], []
        for X, y in self.batches.full_chunks():
            keep = torch.topk((y - self.model(X)).abs().reshape(-1), min(pool, len(X)),
                              largest=False).indices  # fmt: skip
            As.append(self._design64(X[keep]))
            ys.append(y[keep].cpu().double().reshape(-1))
        return torch.cat(As), torch.cat(ys)

    def _design64(self, X: torch.Tensor) -> torch.Tensor:
        """Rows as a float64 CPU design (MPS has no float64), a column of ones last when
        the model has an intercept: the exact finishes' coordinates, ``A @ _beta64()``."""
        A = X.cpu().double()
        return torch.cat([A, torch.ones_like(A[:, :1])], 1) if self.model.bias is not None else A

    @torch.no_grad()
    def _keep_if_not_higher(self, beta: torch.Tensor) -> bool:
        """Set the parameters to ``beta`` (float64, intercept last); undo it if the exact
        objective rises beyond rounding (at a flat optimum a step may "raise" it by that)."""
        W, b = self.model.weight, self.model.bias
        before, saved = self._objective_now(), self._beta64()

        def put(theta: torch.Tensor) -> None:
            W.copy_(theta[: W.numel()].view_as(W))
            if b is not None:
                b.copy_(theta[-1:].view_as(b))

        put(beta)
        if self._objective_now() > before * (1 + 64 * torch.finfo(W.dtype).eps):
            put(saved)
            return False
        return True

    def _beta64(self) -> torch.Tensor:
        w = self.model.weight.detach().cpu().double().reshape(-1)
        b = self.model.bias
        return torch.cat([w, b.detach().cpu().double().reshape(-1)]) if b is not None else w

    def finish_newton_autograd(self, steps: int = 3) -> str:
        """Your own loss: Newton steps in float64 with the Hessian from autograd (``p``
        backward passes over the rows). Exact for a loss made of quadratic pieces (a
        Huber written by hand), harmless otherwise: a step that raises the objective, or
        a Hessian that is not positive definite, is not taken."""
        from torch.autograd.functional import hessian, jacobian

        A, y = self._rows64()
        y = y.reshape(-1, 1)

        def objective(theta: torch.Tensor) -> torch.Tensor:
            return self.loss_fn((A @ theta).reshape(-1, 1), y)

        done = 0
        for _ in range(steps):
            theta = self._beta64()
            try:
                H, g = hessian(objective, theta), jacobian(objective, theta)
                step = -torch.linalg.solve(H, g)
            except RuntimeError:  # not defined, or singular
                break
            if not torch.isfinite(step).all() or float(step @ g) >= 0:
                break  # not a descent direction: the Hessian is not positive definite here
            if not self._keep_if_not_higher(theta + step):
                break
            done += 1
        return "L-BFGS converged: the objective stopped falling" + (
            f"; then {done} Newton step{'s' * (done != 1)} with autograd's Hessian" if done else ""
        )

    @torch.no_grad()
    def finish_newton(self, steps: int = 3) -> str:
        """A loss made of quadratic pieces (MSE, Huber) is a quadratic on the piece where
        L-BFGS stopped: Newton's step there, in float64 from summed per-row gradients and
        curvatures (``sum_and_grad``, ``curvature``), lands on its exact minimizer, whatever
        the columns' conditioning. Repeated while the piece changes; a step that raises the
        objective is undone."""
        p = self.model.weight.numel() + (self.model.bias is not None)
        done = 0
        for _ in range(steps):
            H = torch.zeros(p, p, dtype=torch.float64)
            g = torch.zeros(p, dtype=torch.float64)
            beta = self._beta64()
            for X, y in self.batches.full_chunks():  # chunk by chunk: streamed data too
                A, true = self._design64(X), y.cpu().double().reshape(-1)
                pred = A @ beta
                curv = self.loss_fn.curvature(pred, true)
                _, grad = self.loss_fn.sum_and_grad(pred.clone(), true)
                H += A.T @ (A * curv[:, None])
                g += A.T @ grad
            step = torch.linalg.lstsq(H, -g.reshape(-1, 1)).solution.reshape(-1)
            if not torch.isfinite(step).all() or not self._keep_if_not_higher(beta + step):
                break
            done += 1
        return "L-BFGS converged: the objective stopped falling" + (
            f"; then {done} Newton step{'s' * (done != 1)} on its last quadratic piece"
            if done
            else ""
        )

    def _objective_now(self) -> float:
        total, n = 0.0, 0
        with self._exact_loss():
            for X, y in self.batches.full_chunks():
                total += float(self.loss_fn(self.model(X), y)) * X.shape[0]
                n += X.shape[0]
        return total / max(n, 1)

    # -- end of epoch -----------------------------------------------------------------

    def _end_epoch(self, seen: int, seconds: float, grad_norm: float) -> EpochReport:
        st, s = self.state, self.settings
        for p in self.params:
            if not torch.isfinite(p).all():
                self._check_finite(math.nan)
        train_loss = st.epoch_loss_sum / max(st.epoch_count, 1) * s.loss_scale
        val, params, residuals = self.evaluate(self.model)
        report = EpochReport(
            epoch=st.epoch + 1,
            step=st.step,
            train_loss=train_loss,
            val=val,
            params=params,
            lr=float(self.opt.param_groups[0]["lr"]),
            grad_norm=grad_norm,
            samples_per_second=seen / seconds if seconds > 0 else math.nan,
            seconds=seconds,
            residuals=residuals,
        )
        st.epoch += 1
        st.batch, st.epoch_loss_sum, st.epoch_count = 0, 0.0, 0
        if self.scheduler is not None:
            self.scheduler.step()
        self.last = report
        self.history.append(report)
        self.sinks.epoch(report)
        return report

    def early_stop(self, report: EpochReport) -> bool:
        """Track the best validation loss; past ``patience`` bad epochs, restore the best."""
        patience, st = self.settings.early_stopping_patience, self.state
        if patience is None or report.val is None:
            return False
        if report.val["loss"] < st.best_val:
            st.best_val, st.best_epoch, st.bad_epochs = report.val["loss"], report.epoch, 0
            st.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return False
        st.bad_epochs += 1
        if st.bad_epochs < patience:
            return False
        if st.best_weights is not None:
            self.model.load_state_dict(st.best_weights)
        return True


@contextlib.contextmanager
def step_threads(device: torch.device, numbers: int):
    """Steps on at most ``SMALL_STEP`` numbers run on one CPU thread: MKL splits even a
    256 x 17 matrix-vector product over every core, and the hand-off costs more than the
    product (2-core Xeon: X.T @ g, 256 x 16, 2.6 us on one thread, 5.8 us on two; 700 us
    when the other core is busy). Gathers of rows still use every thread (see
    ``InMemoryBatches._gather``)."""
    before = torch.get_num_threads()
    if device.type != "cpu" or before == 1 or numbers > SMALL_STEP:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _independent_rows(A: torch.Tensor, p: int) -> torch.Tensor:
    """Indices of the first ``p`` rows of ``A`` (in order) that are linearly independent,
    by Gram-Schmidt; fewer if there are not ``p`` such rows."""
    basis: list[torch.Tensor] = []
    chosen: list[int] = []
    for i, row in enumerate(A):
        v = row.clone()
        for q in basis:
            v -= (q @ v) * q
        norm = float(v.norm())
        if norm > 1e-8 * float(row.norm()):
            basis.append(v / norm)
            chosen.append(i)
            if len(chosen) == p:
                break
    return torch.tensor(chosen, dtype=torch.long)


def _windows(items, k: int):
    """``(window of k items, its rows, is it the last)`` over ``items`` (a list or a
    stream of ``(item, rows)``)."""
    it = iter(items)
    window = list(itertools.islice(it, k))
    while window:
        following = list(itertools.islice(it, k))
        rows = window[0][1] if k == 1 else sum(n for _, n in window)  # all ranks
        yield window, rows, not following
        window = following


class _FusedGrads:
    """What ``loss.backward()`` computes for ``nn.Linear``, in closed form, into one
    buffer: with the per-row gradient ``g = d loss / d pred``, ``dW = X.T @ g`` and
    ``db = sum(g)``, i.e. ``[X, 1].T @ g``: one ``addmv`` per micro-batch (a ``Batch``
    carries ``[X, 1].T``). ``weight.grad`` and ``bias.grad`` are views of the buffer for
    the epoch; the window's first micro-batch overwrites it (``train.zero_grad``) or adds
    to it (``zero_grad: false``: ``.grad`` keeps what the steps before left in it)."""

    def __init__(self, model: nn.Linear, take: Callable[[Any], tuple]) -> None:
        W, b = model.weight, model.bias
        self._take = take
        self.threads = torch.get_num_threads() if W.device.type == "cpu" else 1
        self.W, self.b, self.w, self.f = W, b, W.view(-1), W.numel()
        self.flat = torch.zeros(self.f + (b is not None), dtype=W.dtype, device=W.device)
        for p, view in ((W, self.flat[: self.f]), (b, self.flat[self.f :])):
            if p is not None:
                if p.grad is not None:  # zero_grad: false, or a resumed run's gradient
                    view.copy_(p.grad.reshape(-1))
                p.grad = view.view_as(p)

    def backward(self, loss_fn: nn.Module, item: Any, n_win: int, fresh: bool) -> tuple[Any, float]:
        """Add (or, ``fresh``, write) the micro-batch's share of the window's mean-loss
        gradient. Returns its summed loss and the factor that makes that its weighted
        mean, or ``(None, 0)`` for an empty share. Runs under ``torch.no_grad``."""
        if isinstance(item, Batch):
            xb, y1, x1t = item.X, item.y1, item.X1T
        else:  # indices (sharded) or the rows (streamed): no [X, 1] at hand
            xb, yb = self._take(item)
            y1, x1t = yb[:, 0], None
        if xb.shape[0] == 0:
            return None, 0.0
        b = self.b
        pred = torch.addmv(b, xb, self.w) if b is not None else torch.mv(xb, self.w)
        total, g = loss_fn.sum_and_grad(pred, y1)
        scale = 1.0 / n_win  # the micro-batch's mean, weighted by its share of the window
        beta = 0.0 if fresh else 1.0
        if x1t is not None and b is not None and self.threads == 1:
            self.flat.addmv_(x1t, g, beta=beta, alpha=scale)
        elif x1t is not None and b is not None:
            # MKL's threaded gemv over f + 1 rows is slow unless f + 1 is a multiple of its
            # vector width (17 rows at batch 4096, 2-core Xeon: 28 us on two threads, 9 us
            # on one), while every other op of the step gains from the threads
            torch.set_num_threads(1)
            self.flat.addmv_(x1t, g, beta=beta, alpha=scale)
            torch.set_num_threads(self.threads)
        else:
            self.flat[: self.f].addmv_(xb.t(), g, beta=beta, alpha=scale)
            if b is not None:
                self.flat[self.f :].mul_(beta).add_(g.sum(), alpha=scale)
        return total, scale

    def release(self, keep: bool) -> None:
        """After the epoch: the gradients become ``None`` (as ``zero_grad`` leaves them), or
        with ``keep`` their own tensors (``zero_grad: false``)."""
        for p in (self.W, self.b):
            if p is not None:
                p.grad = p.grad.clone() if keep else None


def _grad_norm(params: list[torch.Tensor]) -> Any:
    """The gradients' overall norm: a tensor where they are (read it with ``float``)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return math.nan
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
