"""Ctrl-C and SIGTERM, from the first line of ``huberfit`` to the run folder's last file.

One policy for the whole process (``install``; ``train_run`` installs it for the length of
a run when the CLI has not):

- **A first request** (SIGINT or SIGTERM) asks the run to stop. While the run's folder is
  open and ``fit`` has not returned (``in_fit``) it only sets ``stop``: training finishes
  its step (under torchrun: all ranks the same one) and the run saves. Anywhere else
  (start-up, final scoring, pictures) it raises ``Interrupted`` at once.
- **A second request** stops at once, also inside ``fit``: ``Interrupted(hard=True)``; the
  run keeps its last checkpoint. A repeat within ``SAME_REQUEST_SECONDS`` of the first is
  the same request: a job-wide Ctrl-C reaches each torchrun worker twice (from the
  terminal's process group, and forwarded by torchrun's agent).
- **Never half-way**: ``Interrupted`` is not raised inside a ``critical`` section (an
  atomic file write: the write finishes, then it is raised) nor inside an ``import`` (it is
  raised between two imports, ``_ImportGate``, or at the latest 50 ms after: Ctrl-C during
  start-up never leaves numpy or torch half-imported, which gives tracebacks later or an
  abort at exit).

``apart`` runs a long native computation (the reference solve after training) in a forked
child and waits for it where a signal can interrupt the wait: Python runs a signal handler
only between bytecodes, so a handler waits for a LAPACK or HiGHS call to return (minutes on
a large problem); and a thread left inside OpenBLAS at interpreter exit crashes its cleanup
("BLAS : Bad memory unallocation!", SIGSEGV), where a child process is simply killed.

``fault`` is a test hook: ``HUBERFIT_FAULT=stage:SIGNAL[:n]`` sends ``SIGNAL`` to this
process the ``n``-th time (default: first) the run reaches ``stage`` (see ARCHITECTURE.md).
Standard library only: ``cli.main`` installs the policy before any heavy import.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

TYPE_CHECKING = False  # not typing's: that import alone takes ~10 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType
    from typing import Any

SAME_REQUEST_SECONDS = 2.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_RETRY = (signal.SIGALRM,) if hasattr(signal, "setitimer") else ()  # POSIX
_RETRY_SECONDS = 0.05  # while an import is in progress, look again this often


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop where it could not simply finish its step.

    ``hard``: a second request (stop at once; nothing new is saved). ``run_dir`` and
    ``saved_epoch`` (None: no checkpoint) are filled in by the run that was stopped."""

    def __init__(self, hard: bool = False) -> None:
        super().__init__("interrupted")
        self.hard = hard
        self.run_dir: str | None = None
        self.saved_epoch: int | None = None


class Policy:
    """The process's answer to SIGINT/SIGTERM (see the module docstring)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.first_at: float | None = None
        self.hard = False
        self.cooperative = 0
        self.critical = 0
        self.pending = False

    # -- the handler ------------------------------------------------------------------

    def handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.first_at is not None:
            if now - self.first_at < SAME_REQUEST_SECONDS:
                return  # the same request, delivered twice
            self.hard = True
        else:
            self.first_at = now
            self.stop.set()
            if self.cooperative:
                return
        self._raise_when_safe(frame)

    def _raise_when_safe(self, frame: FrameType | None) -> None:
        if self.critical:
            self.pending = True  # raised when the section ends
        elif _importing(frame) and _RETRY:
            self.pending = True
            signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS)
        else:
            self._raise()

    def _raise(self) -> None:
        self.pending = False
        if _RETRY:
            signal.setitimer(signal.ITIMER_REAL, 0)  # no retry left to fire at exit
        raise Interrupted(self.hard)

    def _retry(self, signum: int, frame: FrameType | None) -> None:
        if self.pending and (self.hard or not self.cooperative):
            self._raise_when_safe(frame)

    # -- sections ---------------------------------------------------------------------

    @contextmanager
    def in_fit(self) -> Iterator[threading.Event]:
        """The run's folder is open and ``fit`` polls ``stop``: a first request only sets it
        (one that came while the folder was being made, too)."""
        self.cooperative += 1
        try:
            if self.pending and not self.hard:
                self.pending = False  # a first request during start-up: fit sees stop
            yield self.stop
        finally:
            self.cooperative -= 1
        self._raise_pending()

    @contextmanager
    def critical_section(self) -> Iterator[None]:
        self.critical += 1
        try:
            yield
        finally:
            self.critical -= 1
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self.pending and not self.critical and (self.hard or not self.cooperative):
            self._raise()


_policy: Policy | None = None


class _ImportGate:
    """A finder that finds nothing, first on ``sys.meta_path``: at the start of an import
    that no other import encloses (the last one has finished, this one has not begun) an
    interrupt waiting for the end of an import is raised: before any folder is made."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        p = _policy
        if p is None or not p.pending or p.critical or (p.cooperative and not p.hard):
            return None
        frame, loads = sys._getframe(1), 0
        while frame is not None:
            loads += frame.f_code.co_name == "_find_and_load"
            frame = frame.f_back
        if loads <= 1:
            p._raise()
        return None


_gate = _ImportGate()


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install(early: list[float] | None = None) -> Policy:
    """Install the process's policy (once; the main thread only) and return it. ``early``:
    the times of requests noted before it could be imported (``huberfit.__main__``)."""
    global _policy
    if _policy is None:
        _policy = Policy()
    if _main_thread():
        for s in _SIGNALS:
            signal.signal(s, _policy.handle)
        for s in _RETRY:
            signal.signal(s, _policy._retry)
        if _gate not in sys.meta_path:
            sys.meta_path.insert(0, _gate)
    if early and _policy.first_at is None:
        _policy.first_at = early[0]
        _policy.stop.set()
        _policy._raise_when_safe(sys._getframe())
    return _policy


@contextmanager
def run_signals() -> Iterator[Policy]:
    """The policy for one run: the process's one when installed (``cli.main``), else one
    installed for the run and taken away after it (the Python API, tests)."""
    global _policy
    if _policy is not None or not _main_thread():
        yield _policy or Policy()  # another thread: no signals reach it
        return
    previous = {s: signal.getsignal(s) for s in (*_SIGNALS, *_RETRY)}
    policy = install()
    try:
        yield policy
    finally:
        _policy = None
        if _gate in sys.meta_path:
            sys.meta_path.remove(_gate)
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def critical() -> Iterator[None]:
    """A section a signal must not cut (an atomic write): it raises at the end instead."""
    if _policy is None:
        yield
        return
    with _policy.critical_section():
        yield


def ignore() -> None:
    """From here on (the process is exiting) signals are ignored."""
    if _main_thread():
        for s in (*_SIGNALS, *_RETRY):
            signal.signal(s, signal.SIG_IGN)


class Lost(RuntimeError):
    """``apart``'s child process ended without an answer (killed: out of memory, say)."""


def apart(stage: str, fn: Callable[[], Any], fork: bool = True) -> Any:
    """``fn()``, computed in a forked child process (with ``fork``, on Linux, in the main
    thread, with a policy installed; else here) while this process waits for its answer
    where a signal is answered at once: ``Interrupted`` kills the child. ``stage``: the test
    hook's name for the wait. ``fn``'s exceptions are raised here (when they pickle; else a
    ``RuntimeError`` naming them); a child that ends without an answer raises ``Lost``. Where
    no process can be made (no memory, no file descriptor) it is computed here."""
    if not (fork and _policy is not None and _main_thread() and sys.platform == "linux"):
        fault(stage)
        return fn()
    import pickle

    parent = os.getpid()
    try:
        r, w = os.pipe()
    except OSError:  # no file descriptor left: here, then
        fault(stage)
        return fn()
    try:
        pid = os.fork()
    except OSError:  # no memory for a process (strict overcommit): here, then
        os.close(r)
        os.close(w)
        fault(stage)
        return fn()
    if pid == 0:  # the child: never returns
        _child(fn, r, w, parent)
    os.close(w)
    try:
        fault(stage)  # test hook
        answer = _answer(r, _policy)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # a signal (or an error) while waiting
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    try:
        ok, value = pickle.loads(answer)
    except Exception:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")  # fmt: skip
        raise Lost(f"its process ended without an answer ({how})") from None
    if not ok:
        raise value
    return value


def _answer(r: int, policy: Policy) -> bytes:
    """What the child sends, until it closes the pipe. A signal raises here (its handler
    runs while ``select`` waits), and so does a first request that only set ``stop``
    (inside a sweep, whose trials finish their step: waiting for the reference is not one)."""
    import select

    chunks = []
    while True:
        if policy.stop.is_set():
            raise Interrupted(policy.hard)
        if select.select([r], [], [], _RETRY_SECONDS)[0]:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _child(fn: Callable[[], Any], r: int, w: int, parent: int) -> None:
    """``apart``'s child: computes ``fn()``, sends ``(ok, value or exception)`` pickled, and
    leaves with ``os._exit`` (nothing of the parent's is flushed, closed or run at exit). It
    ignores SIGINT/SIGTERM (a terminal's Ctrl-C reaches the whole process group: the parent
    answers it and kills the child) and dies with the parent (Linux's PR_SET_PDEATHSIG)."""
    code = 1
    try:
        import pickle

        os.close(r)
        for s in (*_SIGNALS, *_RETRY):
            signal.signal(s, signal.SIG_IGN)
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # no prctl: the parent's SIGKILL still ends it
            pass
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)
        try:
            answer = (True, fn())
        except BaseException as exc:
            answer = (False, exc)
        try:
            data = pickle.dumps(answer)
        except Exception as exc:  # an exception (or answer) that does not pickle
            what = answer[1] if not answer[0] else exc
            data = pickle.dumps((False, RuntimeError(f"{type(what).__name__}: {what}")))
        with os.fdopen(w, "wb") as pipe:
            pipe.write(data)
        code = 0
    finally:
        os._exit(code)


# ----------------------------------------------------------------------------- test hook

_fault_seen: dict[str, int] = {}


def fault(stage: str) -> None:
    """Test hook: ``HUBERFIT_FAULT=stage:SIGNAL[:n]`` (e.g. ``checkpoint:SIGKILL:2``) sends
    ``SIGNAL`` to this process the ``n``-th time the run reaches ``stage`` (``folder``,
    ``step``, ``checkpoint``, ``scoring``, ``reference``, ``pictures``, ``data``, ``delta``)."""
    spec = os.environ.get("HUBERFIT_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != stage:
        return
    _fault_seen[stage] = _fault_seen.get(stage, 0) + 1
    if _fault_seen[stage] == (int(parts[2]) if len(parts) > 2 else 1):
        os.kill(os.getpid(), getattr(signal, parts[1]))


class _StepFault:
    """Sinks that reach the ``step`` stage at each logged step after the first epoch
    (mid-epoch when an epoch has several logged steps)."""

    def __init__(self, sinks: Any) -> None:
        self.sinks, self.epochs = sinks, 0

    def step(self, step: int, train_loss: float) -> None:
        self.sinks.step(step, train_loss)
        if self.epochs:
            fault("step")

    def epoch(self, report: Any) -> None:
        self.sinks.epoch(report)
        self.epochs += 1


def fault_sinks(sinks: Any) -> Any:
    """``sinks``, or (test hook set to ``step``) sinks that reach that stage."""
    if os.environ.get("HUBERFIT_FAULT", "").startswith("step:"):
        return _StepFault(sinks)
    return sinks
