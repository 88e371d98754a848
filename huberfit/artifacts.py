"""The run folder's files: its name, ``config.yaml``, ``metrics.json`` and ``checkpoint.pt``
(what a checkpoint holds, and putting it back for ``--resume``).

Files are written atomically (a temporary file, fsynced, renamed over the old one, and
the folder fsynced), so a crash or a kill never leaves half a file, and a signal waits for
the write to finish (``interrupts.critical``). A temporary file left by a kill during a
write (``.<name>.*.tmp``) is ignored by every reader and removed by the next write in its
folder. Checkpoints hold tensors and plain Python values only and are read back with
``torch.load(..., weights_only=True)``: a checkpoint is never unpickled as code; before
use every entry is checked (``check_checkpoint``), so a damaged one is one line, never a
traceback.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huberfit import interrupts
from huberfit.config import user_path
from huberfit.errors import RunError

CHECKPOINT_FORMAT = 1


def make_run_dir(runs_dir: str | Path, name: str, prefix: str = "") -> Path:
    """Create ``<runs_dir>/<prefix><name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken).
    ``~`` in ``runs_dir`` is the home folder, as in ``data.path``."""
    parent = user_path(check_runs_dir(runs_dir))
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = getattr(exc, "strerror", None) or exc
        raise RunError(f"cannot create runs folder {parent}: {why}") from None
    return free_folder(parent, f"{prefix}{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_runs_dir(runs_dir: str | Path) -> str | Path:
    """``runs_dir``, unless empty: an empty path would put run folders in the current one."""
    if str(runs_dir) == "":
        raise RunError("the runs folder is empty; give a path ('.' is the current folder)")
    return runs_dir


def free_folder(parent: Path, stem: str) -> Path:
    """Create ``parent/stem``, or ``stem-2``, ``stem-3``... when taken."""
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
    """mkstemp makes 0600 files; give the result the permissions of a normal file, then
    rename it over ``path`` and make the rename durable."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without folder file descriptors (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """The one way huberfit writes a file: into a temporary file beside ``path`` (its name is
    yielded), renamed to ``path`` only when the block ends without error. On an error, Ctrl-C
    or SIGTERM (as KeyboardInterrupt) the temporary file is removed, so ``path`` is either
    complete or untouched. A failed write (a full disk, a file-size limit, a read-only
    folder) is a ``RunError`` naming ``path``, also when a library wrapped the OSError."""
    path = Path(path)
    tmp = None
    try:
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a kill
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield tmp
        _fsync_file(tmp)
        _publish(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = write_failure(exc)
        if cause is None or isinstance(exc, RunError):
            raise
        raise RunError(f"cannot write {path}: {cause}") from None


def write_failure(exc: BaseException | None) -> str | None:
    """What the OSError behind ``exc`` (itself, or what it was raised from) says, if any."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc.strerror or str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_file(name: str) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Any) -> None:
    """``write(binary file)`` through ``atomic_path``; a signal during the write is
    answered after it (``interrupts.critical``): small files only (predict's long writes
    use ``atomic_path`` and stay interruptible)."""
    with interrupts.critical(), atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _write_atomic(path, lambda fh: fh.write(data))


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json_text(data) + "\n")


def json_text(data: Any) -> str:
    """The one JSON writer (``metrics.json``, ``comparison.json``, every ``--json``): NaN and
    infinities become ``null`` (JSON has no token for them), anything else not JSON by its
    text (a path)."""
    return json.dumps(_json_safe(data), indent=2, allow_nan=False, default=str)


def _json_safe(value: Any) -> Any:
    """JSON has no NaN: write ``null`` instead of an invalid token (numpy scalars too)."""
    if isinstance(value, bool | int | str | None):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    import torch

    payload = {"format": CHECKPOINT_FORMAT, **payload}

    def write(fh: Any) -> None:
        torch.save(payload, fh)
        interrupts.fault("checkpoint")  # test hook: a signal while the file is half-written

    _write_atomic(path, write)


def is_finite(payload: dict[str, Any]) -> bool:
    """Whether a checkpoint's model and optimizer hold only finite numbers (a diverged
    run's last state does not, and never replaces a finite checkpoint)."""
    import torch

    def tensors(value: Any) -> Any:
        if torch.is_tensor(value):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from tensors(v)
        elif isinstance(value, list | tuple):
            for v in value:
                yield from tensors(v)

    return all(
        bool(torch.isfinite(t).all())
        for part in ("model", "optimizer")
        for t in tensors(payload.get(part))
        if t.is_floating_point()
    )


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Load ``checkpoint.pt`` safely (weights_only) and check every entry, or raise a
    RunError saying why not."""
    import pickle
    import zipfile

    import torch

    run = Path(run_dir)
    path = run / "checkpoint.pt"
    check_run_folder(run)
    if not path.is_file():
        from huberfit.runs import folder_state

        raise RunError(f"{run}: {folder_state(run).detail}")
    not_ours = f"{path}: refused to load: not a huberfit checkpoint"
    if not zipfile.is_zipfile(path):
        raise RunError(f"{not_ours} (not a file written by torch.save)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(
            f"{not_ours} (it holds objects other than tensors and plain values)"
        ) from None
    except Exception as exc:  # a damaged zip, a truncated file, ...
        raise RunError(f"{path}: cannot read checkpoint: damaged or truncated "
                       f"({type(exc).__name__})") from None  # fmt: skip
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RunError(
            f"{path}: checkpoint format {found!r} is not supported by this huberfit "
            f"(expected {CHECKPOINT_FORMAT})"
        )
    problem = check_checkpoint(ckpt)
    if problem:
        raise RunError(f"{path}: not a usable huberfit checkpoint: {problem}")
    return ckpt


def checkpoint_problem(run_dir: Path) -> str | None:
    """Why ``run_dir``'s checkpoint cannot be resumed from (``load_checkpoint``'s reason,
    without the folder), or None: what ``huberfit runs`` and ``--resume`` both say."""
    try:
        load_checkpoint(run_dir)
    except RunError as exc:
        return str(exc).replace(f"{Path(run_dir) / 'checkpoint.pt'}: ", "checkpoint.pt: ", 1)
    return None


# The loop state's entries and their types (``loop.TrainState``); entries added since
# format 1 was first written may be missing (they take their defaults).
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "batch": (int,), "step": (int,), "epoch_loss_sum": (float, int),
    "epoch_count": (int,), "best_val": (float, int), "best_epoch": (int,),
    "bad_epochs": (int,), "best_weights": (dict, type(None)),
    "last_finite_loss": (float, int, type(None)), "lbfgs_stalls": (int,),
    "smoothing": (float, int, type(None)),
}  # fmt: skip
_STATE_LATER = {"prev_lbfgs": (float, int, type(None))}


def check_checkpoint(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with a loaded checkpoint's entries (missing, wrong type or shape, not
    finite), or None. Everything ``restore``, ``predict`` and ``--resume`` read is checked
    here, so that a damaged checkpoint is one line rather than a traceback."""
    import torch

    def kind(value: Any) -> str:
        return type(value).__name__

    for key, types in (("config", dict), ("model", dict), ("optimizer", dict),
                       ("state", dict), ("feature_names", list), ("scaling", dict),
                       ("loss", dict), ("rng", dict)):  # fmt: skip
        if key not in ckpt:
            return f"no {key!r} entry"
        if not isinstance(ckpt[key], types):
            return f"{key!r} is a {kind(ckpt[key])}, not a {types.__name__}"
    features = ckpt["feature_names"]
    if not features or not all(isinstance(f, str) for f in features):
        return "'feature_names' must be a non-empty list of column names"
    n = len(features)
    model = ckpt["model"]
    if set(model) - {"weight", "bias"} or "weight" not in model:
        return f"'model' must hold 'weight' (and 'bias'); it holds {sorted(model)}"
    for name, shape in (("weight", (1, n)), ("bias", (1,))):
        t = model.get(name)
        if t is None:
            continue
        if not torch.is_tensor(t) or not t.is_floating_point():
            return f"model {name!r} is a {kind(t)}, not a floating-point tensor"
        if tuple(t.shape) != shape:
            return f"model {name!r} has shape {tuple(t.shape)}; {n} features need {shape}"
        if not bool(torch.isfinite(t).all()):
            return (f"model {name!r} is not finite (saved by a run that had diverged); "
                    "train a new run with a smaller optimizer.lr")  # fmt: skip
    problem = _check_scaling(ckpt["scaling"], n) or _check_optimizer(ckpt["optimizer"], model)
    if problem:
        return problem
    state = ckpt["state"]
    unknown = set(state) - set(_STATE_TYPES) - set(_STATE_LATER)
    missing = set(_STATE_TYPES) - set(state)
    if unknown or missing:
        which = "unknown" if unknown else "missing"
        return f"'state' entries {sorted(unknown or missing)} are {which}"
    for key, value in state.items():
        types = {**_STATE_TYPES, **_STATE_LATER}[key]
        negative = isinstance(value, int) and value < (-1 if key == "best_epoch" else 0)
        if (
            not isinstance(value, types)
            or isinstance(value, bool)
            or (types == (int,) and negative)
        ):
            return f"state {key!r} is {value!r:.60}"
    rng = ckpt["rng"].get("torch")
    if not torch.is_tensor(rng) or rng.dtype != torch.uint8:
        return "'rng' must hold torch's generator state (a uint8 tensor)"
    scheduler = ckpt.get("scheduler")
    if scheduler is not None and (not isinstance(scheduler, dict) or
                                  not isinstance(scheduler.get("epoch"), int) or
                                  not isinstance(scheduler.get("base_lr"), float | int)):  # fmt: skip
        return f"'scheduler' is {scheduler!r}"
    loss = ckpt["loss"]
    if not isinstance(loss.get("name"), str):
        return "'loss' has no name"
    world = ckpt.get("world_size", 1)
    if not isinstance(world, int) or world < 1:
        return f"'world_size' is {world!r}"
    return None


def _check_scaling(scaling: dict[str, Any], n: int) -> str | None:
    for key, length in (("x_mean", n), ("x_scale", n), ("y_mean", None), ("y_scale", None)):
        value = scaling.get(key)
        values = value if length is not None and isinstance(value, list) else [value]
        if (length is not None and (not isinstance(value, list) or len(value) != length)) or not all(
            isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):  # fmt: skip
            want = f"a list of {length} numbers" if length is not None else "a number"
            return f"scaling {key!r} is {value!r:.60}, not {want}"
    return None


def _check_optimizer(opt: dict[str, Any], model: dict[str, Any]) -> str | None:
    import torch

    groups, state = opt.get("param_groups"), opt.get("state")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        return "'optimizer' has no param_groups"
    lr = groups[0].get("lr")
    if not isinstance(lr, float | int) or isinstance(lr, bool) or not lr >= 0:
        return f"optimizer lr is {lr!r}"
    if not isinstance(state, dict):
        return "'optimizer' has no state"
    shapes = [tuple(t.shape) for t in model.values() if torch.is_tensor(t)]
    for i, entry in state.items():
        if not isinstance(entry, dict):
            return f"optimizer state {i!r} is a {type(entry).__name__}"
        for key, value in entry.items():
            if key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
                ok = (isinstance(i, int) and 0 <= i < len(shapes) and torch.is_tensor(value)
                      and tuple(value.shape) == shapes[i])  # fmt: skip
                if not ok:
                    return f"optimizer state {i!r} {key!r} does not match the model"
    return None


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
        # train.zero_grad: false carries its stale gradients from step to step
        "grads": {
            k: p.grad.detach().cpu() for k, p in model.named_parameters() if p.grad is not None
        },  # fmt: skip
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


def restore(
    ckpt: dict[str, Any], model: Any, optimizer: Any, scheduler: Any, lr: float | None = None
) -> Any:
    """Put a checkpoint's model, optimizer, scheduler and RNG states back; return the
    loop's ``TrainState``. ``lr``: a new learning rate from here on (a diverged run's
    resume), where the schedule, if any, takes it as its base."""
    import torch

    from huberfit.loop import TrainState

    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        state = TrainState.from_dict(ckpt["state"])
        for name, p in model.named_parameters():  # train.zero_grad: false keeps its .grad
            grad = (ckpt.get("grads") or {}).get(name)
            p.grad = None if grad is None else grad.to(device=p.device, dtype=p.dtype)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RunError(f"checkpoint.pt: not a usable huberfit checkpoint: {first}") from None
    if lr is not None and lr != (ckpt["config"].get("optimizer") or {}).get("lr"):
        if scheduler is not None:
            scheduler.base_lr = lr
        for group in optimizer.param_groups:
            group["lr"] = scheduler.lr_at(scheduler.epoch) if scheduler is not None else lr
    return state


# What a resumed run may change: how long it trains, what it logs, where it runs. Anything
# else (data, model, loss, optimizer, dtype, seed, name) is the state the checkpoint holds.
RESUMABLE = ("train.epochs", "train.log_every_steps", "train.early_stopping_patience",
             "train.checkpoint_every", "device")  # fmt: skip


def load_resume(run_dir: str, overrides: list[str]) -> tuple[Any, dict[str, Any]]:
    """The config and checkpoint of a run to continue. Overrides may change only how long
    it trains, what it writes and where (``RESUMABLE``, ``output.*``); any other is refused
    rather than silently dropped or crashing on the saved state. A diverged run resumes
    from its last finite checkpoint and must be given a smaller ``optimizer.lr`` (as it
    was, it would diverge again at the same step)."""
    from huberfit.config import apply_overrides, override_keys, validate_config
    from huberfit.runs import folder_state

    run = Path(run_dir)
    check_run_folder(run)
    folder = folder_state(run, checkpoint_problem)
    if not folder.resumable:
        raise RunError(f"{run}: {folder.detail}")
    diverged = folder.status == "diverged"
    keys = override_keys(overrides)
    allowed = (*RESUMABLE, "data.path", "optimizer.lr") if diverged else (*RESUMABLE, "data.path")
    fixed = sorted(k for k in keys if k not in allowed and not k.startswith("output."))
    if fixed:
        raise RunError(
            f"--resume: {', '.join(fixed)} cannot change in a resumed run (its checkpoint holds "
            f"the state it trained); override only {', '.join(RESUMABLE)}, output.*, data.path "
            "(the same data, moved) or optimizer.lr (a diverged run), or start a new run"
        )
    ckpt = load_checkpoint(run)
    if diverged and (folder.metrics or {}).get("checkpoint_usable") is False:
        raise RunError(f"{run}: {folder.detail}")  # which says so (experiment.unusable)
    raw = apply_overrides(copy.deepcopy(ckpt["config"]), overrides)  # the saved one stays
    if "data.path" in keys and isinstance((raw.get("data") or {}).get("path"), str):
        from huberfit.config import _resolve_from  # as for train: from the current folder

        raw["data"]["path"] = _resolve_from(Path.cwd(), raw["data"]["path"])
    source = f"{run_dir}/checkpoint.pt config"
    config = validate_config(raw, source, overridden=keys)
    then = (ckpt["config"].get("optimizer") or {}).get("lr")
    if diverged and not config.optimizer.lr < (then or math.inf):
        raise RunError(
            f"{run}: the run diverged ({folder.detail or 'NaN/inf'}); resumed as it was it "
            f"would diverge again at the same step: resume it from its last finite checkpoint "
            f"(epoch {ckpt['state']['epoch']}) with a smaller optimizer.lr, e.g. "
            f"optimizer.lr={(then or 1.0) / 10:g}"
        )
    return config, ckpt


def check_same_data(ckpt: dict[str, Any], data: Any, path: str | None) -> None:
    """Resuming: the data must be what the run trained on (the same columns and the same
    training statistics), whether it was moved (``data.path``) or changed in place."""
    then, now = ckpt["scaling"], data.scaling.as_dict()
    same = list(data.feature_names) == list(ckpt["feature_names"]) and all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        for key in ("x_mean", "x_scale", "y_mean", "y_scale")
        for a, b in zip(
            *(v if isinstance(v, list) else [v] for v in (then[key], now[key])), strict=False
        )  # fmt: skip
    )
    if not same:
        where = f" {path}" if path else ""
        raise RunError(
            f"data.path:{where} is not the data this run trained on (its columns or training "
            "statistics differ); resume with the data it trained on, or start a new run"
        )


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


def check_run_folder(run: Path) -> None:
    """A run folder given by a person (``--resume``, ``--run``) exists and is a folder."""
    if not run.is_dir():
        raise RunError(f"{run} is a file, not a run folder" if run.exists()
                       else f"run folder not found: {run}")  # fmt: skip
