"""The run folder's files: its name, ``config.yaml``, ``metrics.json`` and ``checkpoint.pt``
(what a checkpoint holds, and putting it back for ``--resume``).

Files are written atomically (temporary file + rename), so a crash never leaves half a file.
Checkpoints hold tensors and plain Python values only and are read back with
``torch.load(..., weights_only=True)``: a checkpoint is never unpickled as code.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from huberfit.config import user_path
from huberfit.errors import RunError

CHECKPOINT_FORMAT = 1


def make_run_dir(runs_dir: str | Path, name: str, prefix: str = "") -> Path:
    """Create ``<runs_dir>/<prefix><name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken).
    ``~`` in ``runs_dir`` is the home folder, as in ``data.path``."""
    parent = user_path(runs_dir)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = getattr(exc, "strerror", None) or exc
        raise RunError(f"cannot create runs folder {parent}: {why}") from None
    stem = f"{prefix}{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 10_000):
        candidate = parent / (stem if i == 1 else f"{stem}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:  # a name too long for this file system, no permission, ...
            raise RunError(f"cannot create run folder {candidate}: {exc.strerror}") from None
    raise RunError(f"cannot find a free run folder name for {stem} in {parent}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """mkstemp makes 0600 files; give the result the permissions of a normal file."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2) + "\n")


def _json_safe(value: Any) -> Any:
    """JSON has no NaN: write ``null`` instead of an invalid token."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    import torch

    payload = {"format": CHECKPOINT_FORMAT, **payload}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Load ``checkpoint.pt`` safely (weights_only) or raise a RunError saying why not."""
    import pickle

    import torch

    run = Path(run_dir)
    path = run / "checkpoint.pt"
    if not run.is_dir():
        raise RunError(f"run folder not found: {run}")
    if not path.is_file():
        raise RunError(f"{run} is not a huberfit run folder (no checkpoint.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise RunError(f"{path}: refused to load, not a plain checkpoint ({first})") from None
    except Exception as exc:  # corrupt zip, truncated file, ...
        raise RunError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RunError(
            f"{path}: checkpoint format {found!r} is not supported by this huberfit "
            f"(expected {CHECKPOINT_FORMAT})"
        )
    return ckpt


def checkpoint_payload(
    config: Any, data: Any, model: Any, optimizer: Any, scheduler: Any, state: Any,
    world_size: int = 1, loss: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Everything ``--resume`` needs to continue bit-exactly, and ``predict`` to predict:
    the config (as given), model, optimizer, scheduler, loop state, RNG, features, scaling
    and the loss as trained (``loss``: its resolved settings, e.g. the number that
    ``loss.delta: auto`` became; default: the config's)."""
    import torch

    from huberfit import __version__
    from huberfit.losses import own_source

    return {
        "huberfit_version": __version__,
        "config": config.model_dump(mode="json"),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "state": state.to_dict(),
        "feature_names": list(data.feature_names),
        "scaling": data.scaling.as_dict(),
        "target": config.data.target,
        "loss": (loss or config.loss).model_dump(mode="json"),
        "loss_source": own_source(config.loss.name),
        "rng": {"torch": torch.get_rng_state()},
        "world_size": world_size,
    }


def restore(ckpt: dict[str, Any], model: Any, optimizer: Any, scheduler: Any) -> Any:
    """Put a checkpoint's model, optimizer, scheduler and RNG states back; return the
    loop's ``TrainState``."""
    import torch

    from huberfit.loop import TrainState

    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    return TrainState.from_dict(ckpt["state"])


# What a resumed run may change: how long it trains, what it logs, where it runs. Anything
# else (data, model, loss, optimizer, dtype, seed, name) is the state the checkpoint holds.
RESUMABLE = ("train.epochs", "train.log_every_steps", "train.early_stopping_patience", "device")


def load_resume(run_dir: str, overrides: list[str]) -> tuple[Any, dict[str, Any]]:
    """The config and checkpoint of a run to continue. Overrides may change only how long
    it trains, what it writes and where (``RESUMABLE``, ``output.*``); any other is refused
    rather than silently dropped or crashing on the saved state."""
    from huberfit.config import apply_overrides, override_keys, validate_config

    fixed = sorted(k for k in override_keys(overrides)
                   if k not in RESUMABLE and not k.startswith("output."))  # fmt: skip
    if fixed:
        raise RunError(
            f"--resume: {', '.join(fixed)} cannot change in a resumed run (its checkpoint holds "
            f"the state it trained); override only {', '.join(RESUMABLE)} or output.*, or "
            "start a new run"
        )
    ckpt = load_checkpoint(run_dir)
    raw = apply_overrides(dict(ckpt["config"]), overrides)
    source = f"{run_dir}/checkpoint.pt config"
    return validate_config(raw, source, overridden=override_keys(overrides)), ckpt


def check_same_loss(ckpt: dict[str, Any], name: str) -> None:
    """Resuming a run of your own loss: its file must be the one it trained with."""
    from huberfit.losses import own_source

    then, now = ckpt.get("loss_source"), own_source(name)
    if then and now and then.get("sha256") != now["sha256"]:
        raise RunError(
            f"loss.name: {now['file']} has changed since this run was trained (sha256 "
            f"{then['sha256'][:12]} then, {now['sha256'][:12]} now); put it back as it was to "
            "resume, or train a new run"
        )
