"""``python -m huberfit`` and the ``huberfit`` script: Ctrl-C/SIGTERM are noted from this
module's first statements (before Typer, Rich, numpy or torch are imported; ``_signal``,
built in, because ``signal`` builds its enums first), then answered by the signal policy
(``huberfit.interrupts``: exit 130 with one line, never a half-imported module), then the
command line (``huberfit.cli``). Importing this module is starting the command: the
handlers are set on import, as the ``huberfit`` script runs more of its own code between
the import and ``main()``. What runs before (Python's start-up and ``site``, the script's
``import re``, ``huberfit/__init__.py``, which imports nothing) cannot note a Ctrl-C: there
Python prints its own ``KeyboardInterrupt`` traceback (or, earlier still, the signal's
default action ends the process), and a SIGTERM ends it silently (143)."""

import _signal
import time

_early: list[float] = []  # until the policy is imported: the times of requests, noted


def _note(signum: int, frame: object) -> None:
    _early.append(time.monotonic())


_signal.signal(_signal.SIGINT, _note)
_signal.signal(_signal.SIGTERM, _note)

import sys  # noqa: E402 (after the handlers: every statement before them is a window)


def main() -> None:
    try:
        from huberfit import interrupts

        interrupts.install(_early)
        from huberfit.cli import main as cli_main
    except KeyboardInterrupt:  # during start-up: nothing was written
        if "huberfit.interrupts" in sys.modules:
            sys.modules["huberfit.interrupts"].ignore()
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
