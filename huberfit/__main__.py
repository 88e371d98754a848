"""``python -m huberfit``: the same entry point as the ``huberfit`` script."""

from huberfit.cli import main

if __name__ == "__main__":
    main()
