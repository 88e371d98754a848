"""``python -m huberfit`` and the ``huberfit`` script: the signal policy first (before
Typer, Rich, numpy or torch are imported, so that Ctrl-C during start-up is one line and
exit 130), then the command line (``huberfit.cli``)."""


def main() -> None:
    from huberfit import interrupts

    interrupts.install()
    from huberfit.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
