"""huberfit: linear-regression training experiments in PyTorch.

``huberfit.train``, ``huberfit.compare_losses`` and ``huberfit.load_run`` are the Python API
(``huberfit/api.py``), imported on first use: this file must never import torch, so that
``import huberfit`` and ``huberfit --help`` stay fast. Errors: ``huberfit.HuberfitError``.
"""

from huberfit.errors import HuberfitError

__version__ = "0.1.0"
__all__ = [
    "HuberfitError",
    "HuberfitRegressor",
    "__version__",
    "compare_losses",
    "load_run",
    "train",
]


def __getattr__(name: str):
    if name in ("train", "compare_losses", "load_run", "TrainResult"):
        from huberfit import api

        return getattr(api, name)
    if name == "HuberfitRegressor":  # needs scikit-learn
        from huberfit.estimator import HuberfitRegressor

        return HuberfitRegressor
    raise AttributeError(f"module 'huberfit' has no attribute {name!r}")
