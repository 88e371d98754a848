"""User-fixable errors: each is printed by the CLI as one ``error: ...`` line, exit code 1.

A traceback means a bug; anything the user can fix by changing a config, a file or a flag
raises one of these. Torch-free.
"""


class HuberfitError(Exception):
    """An error the user can fix; its message is one sentence naming what and where."""

    exit_code = 1


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
