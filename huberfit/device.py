"""Resolve the configured device ("auto" | "cpu" | "cuda[:N]" | "mps") to a ``torch.device``.

"auto" picks CUDA, then MPS, then the CPU. An unavailable device is a ``DeviceError`` naming
the devices that are. Imports torch; imports no other huberfit room but errors.
"""

from __future__ import annotations

import torch

from huberfit.errors import DeviceError


def available_devices() -> list[str]:
    """The devices this machine can train on, e.g. ``['cpu', 'cuda:0']``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def resolve_device(name: str, dtype: str = "float32") -> torch.device:
    """Turn a config device name into a usable ``torch.device`` or raise ``DeviceError``."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available() and dtype != "float64":
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(
            f"device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    available = available_devices()
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} is not available here; available: {', '.join(available)}"
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(
                f"device 'mps' is not available here; available: {', '.join(available)}"
            )
        if dtype == "float64":
            raise DeviceError("dtype float64 is not supported on mps; use dtype: float32")
    return device
