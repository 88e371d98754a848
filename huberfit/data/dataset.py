"""The dataset: the data stages wired together for one config.

``load_data`` runs source -> columns -> split -> scaling and returns a ``Dataset``: in
memory, or (for files larger than the memory budget) a streamed scan with a sample of rows
for pictures. ``make_batches`` then gives the training and validation ``BatchSource``s on
the training device. Everything here works in numpy float64 until the end; tensors leave
contiguous, in the configured dtype, on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from huberfit.config import Config, DataConfig
from huberfit.data.batches import BatchSource, InMemoryBatches, ShardedBatches, StreamBatches
from huberfit.data.scaling import Scaling, check_range, fit_scaling
from huberfit.data.split import split_indices
from huberfit.data.stream import StreamInfo, memory_budget_mb, scan, should_stream
from huberfit.data.synthetic import make_synthetic
from huberfit.data.tables import read_tables, resolve_files
from huberfit.errors import ConfigError

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Dataset:
    """A split, scaled regression problem. Shapes: X ``(n, n_features)``, y ``(n, 1)``.

    Streamed (``stream`` set), the tensors hold a sample of up to 10k rows per split, for
    pictures; the batch sources read every row from the files.
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor | None
    y_val: torch.Tensor | None
    feature_names: list[str]
    scaling: Scaling
    source: str
    n_rows: int
    true_weights: list[float] | None = None
    true_bias: float | None = None
    outliers_train: np.ndarray | None = None  # bool per training row (synthetic only)
    outliers_val: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)  # warnings for the console
    constant: list[int] = field(default_factory=list)  # zero-variance features: weight 0
    stream: StreamInfo | None = None


def load_data(
    cfg: DataConfig, seed: int, dtype: str = "float32", bias: bool = True, scale_target: bool = True
) -> Dataset:
    """The dataset the config describes: in memory, or streamed when ``data.streaming``
    says so (``auto``: when the files would not fit the memory budget).

    ``bias=False`` standardizes by scale only (no centering), so that the model without an
    intercept keeps exactly the same minimizer. ``scale_target=False`` leaves the target in
    its own units (your own loss module sees the residuals you would compute by hand).
    """
    if cfg.source != "synthetic" and should_stream(
        cfg.streaming, cfg.path or "", cfg.source, cfg.memory_budget_mb
    ):
        data = _load_streamed(cfg, seed, dtype, bias, scale_target)
    else:
        _check_fits_in_memory(cfg)
        data = _load_in_memory(cfg, seed, dtype, bias, scale_target)
    return data


def _check_fits_in_memory(cfg: DataConfig) -> None:
    """Refuse rows that cannot fit in this machine's memory before allocating any: loading
    holds about four float64 copies of them at its peak (the rows, the split, the scaled
    rows, the tensors; measured 3.5 for synthetic data)."""
    ram = memory_budget_mb(None) * 4 * 2**20  # all of it: memory_budget_mb is a quarter
    if cfg.source == "synthetic":
        need = 4 * 8 * cfg.n_samples * (cfg.n_features + 1)
        what = f"data.n_samples={cfg.n_samples} x data.n_features={cfg.n_features}"
        fix = "use a smaller data.n_samples or data.n_features (or stream rows from Parquet)"
    elif cfg.streaming is False and "://" not in (cfg.path or ""):
        need = 4 * sum(
            f.stat().st_size for f in map(Path, resolve_files(cfg.path or "", cfg.source))
        )
        what = f"loading {cfg.path} (data.streaming: false)"
        fix = "set data.streaming: auto or true to stream the rows from disk"
    else:
        return
    if need > ram:
        raise ConfigError(
            f"{what} needs about {_bytes(need)} of memory; this machine has {_bytes(ram)}: {fix}"
        )


def _bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def _load_in_memory(
    cfg: DataConfig, seed: int, dtype: str, bias: bool, scale_target: bool = True
) -> Dataset:
    notes: list[str] = []
    truth_w = truth_b = outliers = None
    # 1. source and columns
    if cfg.source == "synthetic":
        X, y, truth_w, truth_b, outliers = make_synthetic(cfg, seed)
        names = [f"x{i}" for i in range(X.shape[1])]
        n_f = cfg.n_features
        source = f"synthetic ({cfg.n_samples:,} rows, {n_f} feature{'s' * (n_f != 1)})"
    else:
        # parsed straight into the training dtype (float32 parses ~10% faster); the
        # statistics below are computed in float64 either way
        parse_dtype = np.float32 if dtype == "float32" else np.float64
        X, y, names, dropped = read_tables(
            resolve_files(cfg.path or "", cfg.source), cfg.source, cfg.target, cfg.features,
            cfg.missing, parse_dtype,
        )  # fmt: skip
        if dropped:
            notes.append(f"dropped {dropped:,} row{'s' * (dropped != 1)} with missing or "
                         "non-finite cells")  # fmt: skip
        source = f"{cfg.path} ({X.shape[0]:,} rows)"
    # 2. split, 3. scaling from the training rows
    where = cfg.path if cfg.source != "synthetic" else "data.n_samples"
    train_idx, val_idx = split_indices(X.shape[0], cfg.val_fraction, seed, where=str(where))
    columns = [*names, cfg.target or "y"]
    scaling, scale_notes = fit_scaling(
        X[train_idx], y[train_idx], cfg.standardize, center=bias, names=columns, where=str(where)
    )
    if not scale_target:
        scaling = replace(scaling, y_mean=0.0, y_scale=1.0)
    low, high = np.r_[X.min(axis=0), y.min()], np.r_[X.max(axis=0), y.max()]
    check_range(low.astype(np.float64), high.astype(np.float64), scaling, columns, dtype,
                str(where), len(X))  # fmt: skip
    notes += [f"feature '{names[i]}' {msg}" for i, msg in scale_notes]
    tdtype = TORCH_DTYPES[dtype]

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        Xs = scaling.apply_x(X[idx])
        ys = (y[idx] - scaling.y_mean) / scaling.y_scale
        return _tensor(Xs, tdtype), _tensor(ys.reshape(-1, 1), tdtype)

    X_train, y_train = tensors(train_idx)
    X_val, y_val = tensors(val_idx) if len(val_idx) else (None, None)
    return Dataset(
        X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val,
        feature_names=names, scaling=scaling, source=source, n_rows=int(X.shape[0]),
        true_weights=truth_w, true_bias=truth_b,
        outliers_train=None if outliers is None else outliers[train_idx],
        outliers_val=None if outliers is None else outliers[val_idx],
        notes=notes, constant=[i for i, _ in scale_notes],
    )  # fmt: skip


def _load_streamed(
    cfg: DataConfig, seed: int, dtype: str, bias: bool, scale_target: bool = True
) -> Dataset:
    info = scan(cfg.path or "", cfg.source, cfg.target, cfg.features, seed, cfg.val_fraction,
                cfg.standardize, center=bias)  # fmt: skip
    if not scale_target:
        info.scaling = replace(info.scaling, y_mean=0.0, y_scale=1.0)
    check_range(info.low, info.high, info.scaling, info.columns, dtype, cfg.path or "",
                info.n_rows)  # fmt: skip

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if len(rows) == 0:
            return None, None
        t = _tensor(info.scaling.apply(rows), TORCH_DTYPES[dtype])
        return t[:, :-1].contiguous(), t[:, -1:].contiguous()

    X_train, y_train = tensors(info.samples["train"])
    X_val, y_val = tensors(info.samples["val"])
    files = len({p.path for p in info.pieces})
    return Dataset(
        X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val,
        feature_names=info.features, scaling=info.scaling,
        source=f"{cfg.path} ({info.n_rows:,} rows in {files} file{'s' * (files != 1)}, streamed)",
        n_rows=info.n_rows, notes=info.notes, stream=info, constant=info.constant,
    )  # fmt: skip


def dataset_from_arrays(
    X: np.ndarray, y: np.ndarray, dtype: str = "float64", bias: bool = True,
    names: list[str] | None = None,
) -> Dataset:  # fmt: skip
    """Arrays already in memory (scikit-learn's ``fit(X, y)``) as a ``Dataset``: every row
    trains (no validation split), standardized as a config's data would be."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    names = names or [f"x{i}" for i in range(X.shape[1])]
    scaling, notes = fit_scaling(X, y, True, center=bias, names=[*names, "y"])
    check_range(np.r_[X.min(axis=0), y.min()], np.r_[X.max(axis=0), y.max()], scaling,
                [*names, "y"], dtype, n_rows=len(X))  # fmt: skip
    tdtype = TORCH_DTYPES[dtype]
    ys = ((y - scaling.y_mean) / scaling.y_scale).reshape(-1, 1)
    return Dataset(
        X_train=_tensor(scaling.apply_x(X), tdtype), y_train=_tensor(ys, tdtype), X_val=None,
        y_val=None, feature_names=names, scaling=scaling, source=f"arrays ({len(X):,} rows)",
        n_rows=len(X), notes=[f"feature '{names[i]}' {msg}" for i, msg in notes],
        constant=[i for i, _ in notes],
    )  # fmt: skip


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype).contiguous()


def make_batches(
    config: Config, data: Dataset, device: torch.device, rank: int = 0, world: int = 1
) -> tuple[BatchSource, BatchSource | None]:
    """The training and validation (None without validation rows) batch sources, for
    process ``rank`` of ``world``: tensors moved to ``device`` once, or streamed."""
    full_batch = config.optimizer.name == "lbfgs"
    batch_size = None if full_batch else config.train.batch_size
    if data.stream is not None:
        if batch_size is None and not full_batch:
            raise ConfigError(
                "train.batch_size: null (full batch) would hold every streamed row in memory; "
                "set a batch size, or use optimizer.name: lbfgs (it streams the full batch)"
            )

        # the rows passed over whole again and again (validation every epoch, L-BFGS's
        # training rows) are kept in memory when each split takes at most half the budget
        keep = memory_budget_mb(config.data.memory_budget_mb) * 2**20 / 2

        def streamed(split: str, size: int | None, keep_bytes: float) -> StreamBatches:
            return StreamBatches(data.stream, split, size, device, TORCH_DTYPES[config.dtype],
                                 config.data.shuffle_buffer, rank=rank, world=world,
                                 keep_bytes=keep_bytes)  # fmt: skip

        train = streamed("train", batch_size, keep if full_batch else 0)
        return train, streamed("val", None, keep) if data.stream.n_val else None

    def in_memory(X: torch.Tensor, y: torch.Tensor, size: int | None) -> BatchSource:
        X, y = X.to(device), y.to(device)
        if world == 1:
            return InMemoryBatches(X, y, size, config.seed)
        return ShardedBatches(X, y, size, config.seed, rank, world)

    train = in_memory(data.X_train, data.y_train, batch_size)
    if data.X_val is None:
        return train, None
    return train, in_memory(data.X_val, data.y_val, None)
