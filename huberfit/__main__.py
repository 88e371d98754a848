"""``python -m huberfit`` and the ``huberfit`` script: Ctrl-C/SIGTERM are noted from the
first line (before Typer, Rich, numpy or torch are imported), then answered by the signal
policy (``huberfit.interrupts``: exit 130 with one line, never a half-imported module),
then the command line (``huberfit.cli``)."""

import signal
import sys
import time


def main() -> None:
    early: list[float] = []
    for s in (signal.SIGINT, signal.SIGTERM):  # until the policy is imported: note it
        signal.signal(s, lambda signum, frame: early.append(time.monotonic()))
    try:
        from huberfit import interrupts

        interrupts.install(early)
        from huberfit.cli import main as cli_main
    except KeyboardInterrupt:  # during start-up: nothing was written
        if "huberfit.interrupts" in sys.modules:
            sys.modules["huberfit.interrupts"].ignore()
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
