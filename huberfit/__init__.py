"""huberfit: linear-regression training experiments in PyTorch.

``huberfit.train``, ``huberfit.compare_losses``, ``huberfit.load_run`` (``huberfit/api.py``)
and ``huberfit.HuberfitRegressor`` (``huberfit/estimator.py``, needs scikit-learn) are the
Python API, imported on first use: this file must never import torch, so that
``import huberfit`` and ``huberfit --help`` stay fast. Errors: ``huberfit.HuberfitError``
and its subclasses.
"""

from huberfit.errors import (
    ConfigError,
    DataError,
    DeviceError,
    DivergedError,
    HuberfitError,
    RunError,
)

__version__ = "0.1.0"
_LAZY = ("train", "compare_losses", "load_run", "TrainResult", "HuberfitRegressor")
__all__ = [
    "ConfigError",
    "DataError",
    "DeviceError",
    "DivergedError",
    "HuberfitError",
    "RunError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in ("train", "compare_losses", "load_run", "TrainResult"):
        from huberfit import api

        return getattr(api, name)
    if name == "HuberfitRegressor":  # needs scikit-learn
        from huberfit.estimator import HuberfitRegressor

        return HuberfitRegressor
    raise AttributeError(f"module 'huberfit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
