"""User-fixable errors: each is printed by the CLI as one ``error: ...`` line, exit code 1.

A traceback means a bug; anything the user can fix by changing a config, a file or a flag
raises one of these. Torch-free.
"""

MAX_MESSAGE = 1000  # characters: a message is read, not scrolled


def one_line(text: str, width: int = MAX_MESSAGE) -> str:
    """``text`` on one line of at most ``width`` characters: line breaks and other control
    characters escaped (``\\n``), the middle of a longer text cut out (``...``)."""
    text = _cut(text, width)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return _cut(text, width)


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    tail = (width - 3) // 3
    return text[: width - 3 - tail] + "..." + text[len(text) - tail :]


class HuberfitError(Exception):
    """An error the user can fix; its message is one sentence naming what and where (kept
    to one line of at most ``MAX_MESSAGE`` characters, whatever the input put in it)."""

    exit_code = 1

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


class ConfigError(HuberfitError, ValueError):
    """A config file, key or override is wrong (a ValueError too, as scikit-learn's
    invalid parameters are)."""


class DataError(HuberfitError):
    """A data file is missing, unreadable or has bad cells."""


class DeviceError(HuberfitError):
    """The requested device is not available."""


class RunError(HuberfitError):
    """A run folder or checkpoint cannot be used."""


class DivergedError(HuberfitError):
    """Training produced NaN/inf; the run folder was kept with status 'diverged'."""
