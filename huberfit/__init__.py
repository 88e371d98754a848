"""huberfit: linear-regression training experiments in PyTorch.

``huberfit.train``, ``huberfit.compare_losses``, ``huberfit.load_run`` (``huberfit/api.py``)
and ``huberfit.HuberfitRegressor`` (``huberfit/estimator.py``, needs scikit-learn) are the
Python API, imported on first use: this file must never import torch, so that
``import huberfit`` and ``huberfit --help`` stay fast. Errors: ``huberfit.HuberfitError``
and its subclasses (``huberfit/errors.py``), imported on first use too: this file imports
nothing, as the ``huberfit`` command imports it before ``huberfit.__main__`` can note a
Ctrl-C (every millisecond here is one in which Ctrl-C gives Python's traceback).
"""

__version__ = "0.1.0"
_ERRORS = ("ConfigError", "DataError", "DeviceError", "DivergedError", "HuberfitError",
           "RunError")  # fmt: skip
_LAZY = ("train", "compare_losses", "load_run", "TrainResult", "HuberfitRegressor")
__all__ = [*_ERRORS, "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _ERRORS:
        from huberfit import errors

        return getattr(errors, name)
    if name in ("train", "compare_losses", "load_run", "TrainResult"):
        from huberfit import api

        return getattr(api, name)
    if name == "HuberfitRegressor":  # needs scikit-learn
        from huberfit.estimator import HuberfitRegressor

        return HuberfitRegressor
    raise AttributeError(f"module 'huberfit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ERRORS) | set(_LAZY))
