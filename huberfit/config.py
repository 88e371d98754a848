"""The config: a typed pydantic schema, YAML loading, dotted overrides and error messages.

Validated once, at the edge: everything below receives a ``Config`` it can trust. Every
problem in a file is reported at once, in one line, each naming the dotted key, the
constraint and the value given. Hostile input (a device, an alias bomb, deep nesting,
duplicate keys, NaN, numbers that overflow where they are used) is refused by a bounded
loader and the schema, never a traceback. Torch-free (imported by ``huberfit --help``).
"""

from __future__ import annotations

import difflib
import re
import stat
import unicodedata
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from huberfit.errors import ConfigError, one_line

# a run name: never hidden (".x"), never read as an option ("-x") where a command names it
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
NAME_RULE = "ASCII letters, digits, '_', '-' and '.', beginning with a letter, digit or '_'"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
# A run folder is <prefix><name>-<YYYYmmdd-HHMMSS>[-N]: a name of at most 128 characters
# keeps it well inside the 255 bytes a file name may have (ext4, APFS, NTFS).
MAX_NAME = 128
MAX_INT = 2**63 - 1  # every integer key: what torch, NumPy and Python sizes hold
MAX_SEED = MAX_INT  # seeds torch and NumPy generators (64-bit), with room for seed + 1

# Bounds on finite values that would still overflow: torch multiplies the optimizer's
# numbers into float32 tensors (largest float32: 3.4e38), and synthetic data are squared and
# summed in float64 for scaling (1e100 squared and summed over 1e12 rows stays finite).
F32_MAX = 3.4028234663852886e38
SYNTHETIC_MAX = 1e100
PositiveFloat = Annotated[float, Field(gt=0, le=F32_MAX)]
Synthetic = Annotated[float, Field(ge=-SYNTHETIC_MAX, le=SYNTHETIC_MAX)]
# The learning rate an optimizer gets when optimizer.lr is not given. SGD and Adam: steps
# that train the built-in experiment (standardized data) in its 50 epochs; L-BFGS: 1, the
# unit quasi-Newton step its line search starts from (smaller values stop it early).
DEFAULT_LR = {"sgd": 0.05, "adam": 0.01, "adamw": 0.01, "lbfgs": 1.0}


class _Section(BaseModel):
    # strict: a quoted "5" is not silently taken for 5; extra="forbid": no misspelt keys;
    # allow_inf_nan=False: every float key (and list of floats) is finite, or refused by name.
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True, allow_inf_nan=False
    )

    @field_validator("*")
    @classmethod
    def _fits(cls, value: Any) -> Any:
        # every key, generally: no string holds a NUL (no file, column or run name does; the
        # OS refuses one in a path), no integer exceeds 64 bits (torch, NumPy and Python's
        # own sizes are 64-bit: a larger one would crash them mid-run)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and "\x00" in v:
                raise ValueError("must not contain a NUL character")
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_INT:
                raise ValueError(f"must be <= {MAX_INT} (a 64-bit integer)")
        return value


def _a_path(value: str | None) -> str | None:
    """A path key's value: never empty (it would mean the current folder, or the config's)."""
    if value == "":
        raise ValueError("is empty; give a path ('.' is the current folder)")
    return value


class DataConfig(_Section):
    """Where the rows come from, how they are split and scaled."""

    source: Literal["synthetic", "csv", "parquet"] = Field(
        "synthetic", description="synthetic | csv | parquet"
    )
    n_samples: int = Field(2000, ge=2, description="synthetic only: number of rows")
    n_features: int = Field(3, ge=1, description="synthetic only: number of features")
    noise_std: float = Field(
        0.5, ge=0, le=SYNTHETIC_MAX, description="synthetic only: std of the Gaussian noise"
    )
    outlier_fraction: float = Field(0.1, ge=0, lt=1, description="share of corrupted rows")
    outlier_scale: float = Field(
        20.0, ge=0, le=SYNTHETIC_MAX, description="typical outlier error, target units"
    )
    true_weights: list[Synthetic] | None = Field(None, description="null: drawn from the seed")
    true_bias: Synthetic = Field(1.0, description="synthetic only: the true intercept")
    path: str | None = Field(None, description="csv/parquet file, relative to the config")
    target: str | None = Field(None, description="csv/parquet: the target column")
    features: list[str] | None = Field(None, description="null: every column but the target")
    missing: Literal["error", "drop"] = Field("error", description="rows with empty/NaN cells")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="0: no validation set")
    streaming: bool | Literal["auto"] = Field(
        "auto", description="csv/parquet: stream from disk; auto: when over the budget"
    )
    memory_budget_mb: int | None = Field(
        None, ge=1, description="auto streaming threshold; null: a quarter of the RAM"
    )
    shuffle_buffer: int = Field(100_000, ge=1, description="streaming: rows mixed at a time")
    standardize: bool = Field(True, description="train standardized; report original units")
    _path = field_validator("path")(_a_path)

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source == "synthetic":
            if self.streaming is True:
                raise ValueError("data.streaming: true needs data.source csv or parquet")
            if self.true_weights is not None and len(self.true_weights) != self.n_features:
                raise ValueError(
                    f"data.true_weights must have n_features={self.n_features} values; "
                    f"got {len(self.true_weights)}"
                )
        else:
            if not self.path:
                raise ValueError(f"data.path is required when data.source is {self.source}")
            if self.streaming is True and self.missing == "drop":
                raise ValueError("data.missing: drop is not available when streaming")
            if not self.target:
                raise ValueError(f"data.target is required when data.source is {self.source}")
        return self

    @model_validator(mode="after")
    def _check_features(self) -> DataConfig:
        names = self.features
        if names is None:
            return self
        if not names:
            raise ValueError("data.features is empty; list at least one column, or null for all")
        if any(not n.strip() for n in names):
            raise ValueError("data.features holds an empty column name")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"data.features lists {', '.join(map(repr, dupes))} more than once")
        if self.target in names:
            raise ValueError(
                f"data.features includes the target {self.target!r}; a model cannot use "
                "its own target as a feature"
            )
        return self


class ModelConfig(_Section):
    bias: bool = Field(True, description="fit an intercept")


# Kept in step with losses.LOSSES by a test: the schema must stay torch-free.
BUILTIN_LOSSES = ("huber", "mse", "l1", "quantile")
# your own loss: a Python file and a class in it, or an importable module and a class
_OWN_LOSS = re.compile(r"^(.+\.py|[A-Za-z_][\w.]*):[A-Za-z_]\w*$")


class LossConfig(_Section):
    name: str = Field(
        "huber",
        description="huber | mse | l1 | quantile, or your own loss module: "
        "path/to/file.py:ClassName (relative to the config) or package.module:ClassName",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="your own loss only: keyword arguments for its class"
    )
    delta: PositiveFloat | Literal["auto"] = Field(
        1.0,
        description="Huber threshold in target units, or auto: 1.345 x the residuals' robust "
        "scale (normalised MAD of a least-squares fit, as statsmodels' RLM with HuberT)",
    )
    quantile: float = Field(
        0.5, gt=0, lt=1, description="quantile loss only: tau, the share of rows below the fit"
    )

    @field_validator("name")
    @classmethod
    def _builtin_or_own(cls, name: str) -> str:
        if name in BUILTIN_LOSSES or _OWN_LOSS.match(name):
            return name
        close = difflib.get_close_matches(name, BUILTIN_LOSSES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"must be one of {', '.join(BUILTIN_LOSSES)}, or your own loss as file.py:Class "
            f"or package.module:Class{hint}"
        )

    @field_validator("kwargs")
    @classmethod
    def _kwargs_for_own_losses(cls, kwargs: dict[str, Any], info: Any) -> dict[str, Any]:
        if kwargs and info.data.get("name") in BUILTIN_LOSSES:
            raise ValueError("is for your own loss module only (built-in losses take "
                             "loss.delta and loss.quantile)")  # fmt: skip
        return kwargs

    @field_validator("delta", mode="before")
    @classmethod
    def _number_or_auto(cls, delta: Any) -> float | str:
        if delta == "auto":
            return delta
        if isinstance(delta, bool) or not isinstance(delta, int | float):
            raise ValueError("must be a number > 0 or auto")
        if not (0 < delta <= F32_MAX):
            raise ValueError(f"must be a finite number > 0 (at most {F32_MAX:.5g}) or auto")
        return float(delta)


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw", "lbfgs"] = Field(
        "sgd", description="sgd | adam | adamw | lbfgs"
    )
    lr: PositiveFloat | None = Field(
        None,
        description="learning rate; null: the optimizer's default (sgd 0.05, adam 0.01, adamw 0.01, lbfgs 1)",
    )
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd only; needs momentum > 0")
    weight_decay: float = Field(0.0, ge=0, le=F32_MAX, description="L2 penalty (not with lbfgs)")
    # an epoch is one LBFGS.step: Ctrl-C is answered between epochs (a second one at once),
    # so an epoch may not be unbounded
    max_iter: int = Field(100, ge=1, le=100_000, description="lbfgs only: iterations per epoch")
    # torch allocates a list of this length at every step: a bound, not a preference
    history_size: int = Field(20, ge=1, le=10_000, description="lbfgs only")

    @model_validator(mode="after")
    def _check_nesterov(self) -> OptimizerConfig:
        if self.lr is None:  # each optimizer's own natural step (lbfgs: the unit quasi-Newton step)
            self.lr = DEFAULT_LR[self.name]
        if self.nesterov and self.momentum == 0:
            raise ValueError("optimizer.nesterov needs optimizer.momentum > 0")
        if self.name == "lbfgs" and self.weight_decay:
            raise ValueError("optimizer.weight_decay is not supported by lbfgs; set it to 0")
        return self


class SchedulerConfig(_Section):
    name: Literal["none", "cosine", "step"] = Field("none", description="none | cosine | step")
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="step: decay factor")
    min_lr: float = Field(0.0, ge=0, le=F32_MAX, description="cosine: final learning rate")


class TrainConfig(_Section):
    epochs: int = Field(50, ge=1, description="passes over the training rows")
    batch_size: int | None = Field(64, ge=1, description="null: full batch")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N epochs without a better val loss"
    )
    log_every_steps: int = Field(10, ge=1, description="loss/train every N steps")
    fused: bool = Field(True, description="closed-form gradients for built-in losses")
    zero_grad: bool = Field(
        True, description="false: gradients add up across steps (the classic mistake)"
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="checkpoint.pt every N epochs; null: 1st, then >= 5 s apart"
    )


class OutputConfig(_Section):
    runs_dir: str = Field("runs", description="parent folder of run folders")
    _path = field_validator("runs_dir")(_a_path)
    tensorboard: bool = Field(True, description="write TensorBoard events")
    flush_secs: int = Field(5, ge=1, description="seconds between event-file flushes")
    images: bool = Field(True, description="fit.png / residuals.png at the end")
    images_every_epochs: int | None = Field(None, ge=1, description="also every N epochs")


class SweepRange(_Section):
    """A range of numbers for ``huberfit sweep`` (``low..high`` or ``low..high:log``)."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)


class SweepConfig(_Section):
    """``huberfit sweep``: the search space and how to search it (``train`` ignores it)."""

    # checked by huberfit.sweep.build_plan against each key's own type, all at once
    params: dict[str, Any] = Field(
        default_factory=dict, description="dotted.key: [choices] or {low, high, log}"
    )
    points: list[dict[str, Any]] = Field(
        default_factory=list, description="explicit trials instead: [{key: value, ...}, ...]"
    )
    sampler: Literal["grid", "random", "tpe"] | None = Field(
        None, description="null: grid when every param is a list of choices, else tpe"
    )
    trials: int | None = Field(None, ge=1, description="null: the whole grid, or 20")
    metric: str = Field("val.loss", description="a metrics.json number, e.g. val.mae")
    direction: Literal["minimize", "maximize"] = Field("minimize", description="of the metric")
    prune: bool = Field(True, description="stop hopeless trials early (median pruner)")


class Config(_Section):
    """A whole experiment. The defaults are the built-in quickstart experiment."""

    name: str = Field(
        "quickstart",
        pattern=NAME_PATTERN,
        max_length=MAX_NAME,
        description="run name, never a path",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seeds data, split, initial weights, shuffling"
    )
    device: str = Field(
        "auto", pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N | mps"
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="float32 | float64")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()
    sweep: SweepConfig | None = Field(None, description="huberfit sweep only")

    @field_validator("name")
    @classmethod
    def _not_dots(cls, name: str) -> str:
        if name in (".", ".."):
            raise ValueError("must be a run name, not a path")
        return name

    @model_validator(mode="after")
    def _check_cross(self) -> Config:
        if self.train.early_stopping_patience is not None and self.data.val_fraction == 0:
            raise ValueError("train.early_stopping_patience needs data.val_fraction > 0")
        if not self.train.zero_grad and self.optimizer.name == "lbfgs":
            raise ValueError(
                "train.zero_grad: false is a lesson for sgd, adam and adamw; L-BFGS's "
                "closure must zero the gradients"
            )
        if self.device == "mps" and self.dtype == "float64":
            raise ValueError("dtype float64 is not supported on mps (MPS has no float64)")
        return self


# ----------------------------------------------------------------------------- YAML

# What a config may be. A config holds a few dozen keys; these bounds keep hostile or
# mistaken input (a device, a data file given as --config, an alias bomb, a nest of
# brackets) from reading forever, expanding without end or recursing past Python's stack.
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32  # levels of nesting, counted through aliases
MAX_VALUES = 100_000  # scalars, lists and mappings, aliases expanded


class _Guarded:
    """A YAML loader that refuses, at the line and column where it happens, what the
    config could never use and what would otherwise hang or crash: nesting deeper than
    ``MAX_DEPTH`` (PyYAML composes recursively), aliases that expand past ``MAX_VALUES``
    values or into themselves, and duplicate keys (YAML forbids them; PyYAML keeps the
    last one silently)."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1  # stops a long flat list early, before it is all composed
        try:
            if self._depth > MAX_DEPTH or self._nodes > MAX_VALUES:
                mark = self.peek_event().start_mark  # type: ignore[attr-defined]
                raise yaml.composer.ComposerError(
                    None, None,
                    f"nested deeper than {MAX_DEPTH} levels" if self._depth > MAX_DEPTH
                    else f"more than {MAX_VALUES:,} values (a config needs a few dozen)",
                    mark,
                )  # fmt: skip
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()  # type: ignore[misc]
        if node is not None:
            _check_tree(node, [], {})
        return node


def _check_tree(
    node: yaml.Node, path: list[str], seen: dict[int, tuple[int, int] | None]
) -> tuple[int, int]:
    """(values, depth) of ``node`` with aliases expanded; raises on a cycle, on too many
    values or levels, and on a duplicate key. An alias is the same node object as its
    anchor, so ``seen`` counts it once (the walk stays as deep as the text)."""
    if id(node) in seen:
        known = seen[id(node)]
        if known is None:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a node that contains it", node.start_mark
            )
        return known
    seen[id(node)] = None
    size, depth = 1, 0
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        seen_here: set[int] = set()  # a key given twice through one alias is one node
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                other = first.setdefault((key.tag, key.value), key)
                if other is not key or id(key) in seen_here:
                    where = _clip(".".join([*path, key.value]))
                    raise yaml.composer.ComposerError(
                        None, None,
                        f"duplicate key '{where}' (lines {other.start_mark.line + 1} and "
                        f"{key.start_mark.line + 1}); keep one",
                        key.start_mark,
                    )  # fmt: skip
            seen_here.add(id(key))
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            for child, child_path in ((key, path), (value, [*path, str(name)])):
                n, d = _check_tree(child, child_path, seen)
                size, depth = size + n, max(depth, d)
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            n, d = _check_tree(child, [*path, str(i)], seen)
            size, depth = size + n, max(depth, d)
    depth += 1
    if size > MAX_VALUES:
        raise yaml.composer.ComposerError(
            None, None,
            f"aliases expand this to more than {MAX_VALUES:,} values (a config needs a few dozen)",
            node.start_mark,
        )  # fmt: skip
    if depth > MAX_DEPTH:
        raise yaml.composer.ComposerError(
            None, None, f"aliases nest this deeper than {MAX_DEPTH} levels", node.start_mark
        )
    seen[id(node)] = (size, depth)
    return size, depth


class _Loader(_Guarded, yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 would read a string)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's own constructors raise plain Python errors on values they cannot build
        # (`!!int x`, `2024-13-01`, an integer of 5000 digits): located here, at the value
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            what = node.tag.rpartition(":")[2] or "a value"
            why = f": {_clip(str(exc), 80)}" * isinstance(exc, ValueError)
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this as {what}{why}", node.start_mark
            ) from None


class _TextLoader(_Guarded, yaml.BaseLoader):
    """BaseLoader (every scalar a string), with the same guards."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, source: str, loader: type = _Loader) -> Any:
    """Parse YAML text safely; a problem names ``source``, line and column."""
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - _Guarded Safe/BaseLoaders only
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, ...)
        char = exc.character if isinstance(exc.character, int) else 0
        where = f"{source}:{_line_column(text, exc.position)}"
        raise ConfigError(
            f"{where}: invalid YAML: character U+{char:04X} is not allowed (a binary file?)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and cmark and (mark is None or cmark.line != mark.line):
            problem += f" ({context} started at line {cmark.line + 1}, column {cmark.column + 1})"
        raise ConfigError(f"{where}: invalid YAML: {_clip(problem, 200)}") from None


def _line_column(text: str | bytes, position: int) -> str:
    """``line:column`` (1-based) of the character (or byte) at ``position``."""
    nl = "\n" if isinstance(text, str) else b"\n"
    line = text.count(nl, 0, position) + 1  # type: ignore[arg-type]
    column = position - (text.rfind(nl, 0, position) + 1) + 1  # type: ignore[arg-type]
    return f"{line}:{column}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping (not yet validated): a regular file (or a
    pipe, as ``--config <(...)`` gives) of at most ``MAX_CONFIG_BYTES``, in UTF-8."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"config path is a directory, not a YAML file: {path}")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise ConfigError(f"config path is not a regular file (a device?): {path}")
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file is larger than {MAX_CONFIG_BYTES >> 20} MiB: {path} (a config holds "
            "keys; data go in data.path)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}:{_line_column(data, exc.start)}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "save the config as UTF-8"
        ) from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"config file is empty: {path} (see `huberfit config init`)")
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got a {kind}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw mapping. Values are YAML (``[1,2]``,
    ``null``, ``1e-3``), except for keys whose schema type is a string (or a list of
    strings): there a value is the text as typed, so ``data.target=YES`` is the column
    ``YES``, not ``true``. An empty value (``key=``) is null."""
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {_clip(repr(item))} must look like dotted.key=value")
        parts = key.split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(
                f"override {_clip(key)}: a dotted key has no empty parts (write it as data.path)"
            )
        if len(parts) > MAX_DEPTH:
            raise ConfigError(f"override {_clip(key)}: keys nest at most {MAX_DEPTH} levels")
        raw = node = dict(raw)  # copied along the key's path: the caller's mapping stays as it was
        for i, part in enumerate(parts[:-1]):
            child = node.get(part, {})
            if not isinstance(child, dict):
                where = _clip(".".join(parts[: i + 1]))
                raise ConfigError(f"override {_clip(key)}: {where} is a value, not a section")
            node[part] = node = dict(child)
        node[parts[-1]] = parse_override_value(parts, value, f"override {_clip(key)}")
    return raw


def parse_override_value(parts: list[str], value: str, source: str) -> Any:
    """One override's value, typed by the schema of the key ``parts`` names."""
    text = value.strip()
    if not text:
        return None
    kind = _schema_kind(parts)
    if kind == "str":
        return text
    if kind == "list[str]" and text not in ("null", "~"):
        return parse_yaml(text, source, _TextLoader)  # every scalar stays a string
    return parse_yaml(text, source)


def _schema_kind(parts: list[str]) -> str:
    """``str``, ``list[str]`` or ``other``: how an override for this key is read."""
    model: Any = Config
    for part in parts[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return "other"
    field = model.model_fields.get(parts[-1])
    if field is None:
        return "other"
    options = [
        a for a in (get_args(field.annotation) or (field.annotation,)) if a is not type(None)
    ]
    if get_origin(field.annotation) is Literal:
        options = [field.annotation]
    if all(_is_str_type(a) for a in options):
        return "str"
    if len(options) == 1 and get_origin(options[0]) is list and get_args(options[0]) == (str,):
        return "list[str]"
    return "other"


def field_at(parts: list[str]) -> Any:
    """The schema field (pydantic ``FieldInfo``) of a leaf key, or None when ``parts`` names
    no key or names a whole section."""
    model: Any = Config
    for part in parts[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    field = model.model_fields.get(parts[-1]) if parts[-1] else None
    if field is None or (isinstance(field.annotation, type)
                         and issubclass(field.annotation, BaseModel)):  # fmt: skip
        return None
    return field


def _is_str_type(annotation: Any) -> bool:
    if annotation is str:
        return True
    return get_origin(annotation) is Literal and all(
        isinstance(a, str) for a in get_args(annotation)
    )


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    defaults: list[str] | None = None,
) -> Config:
    """Load and validate a config: the file (or the built-in quickstart, changed by a
    command's own ``defaults`` overrides), then the user's overrides.

    A relative ``data.path`` in a file is taken relative to that file's folder; one given as
    an override is taken relative to the current directory. A problem is reported against
    where its value came from: the file, or ``override`` for a value given on the command
    line (the built-in config has no problems of its own, so it is never named).
    """
    raw: dict[str, Any] = {}
    source = ""
    if path is not None:
        raw = read_config_file(path)
        source = str(path)
        data = raw.get("data")
        if isinstance(data, dict) and isinstance(data.get("path"), str):
            data["path"] = _resolve_from(Path(path).parent, data["path"])
        _resolve_loss_file(raw, Path(path).parent)
        if "name" not in raw:
            raw["name"] = name_from_file(Path(path))
    raw = apply_overrides(raw, defaults or [])
    raw = apply_overrides(raw, overrides or [])
    data = raw.get("data")
    if "data.path" in override_keys(overrides or []) and isinstance(data, dict):
        if isinstance(data.get("path"), str):  # from the current folder, and said so when saved
            data["path"] = _resolve_from(Path.cwd(), data["path"])
    if "loss.name" in override_keys(overrides or []):
        _resolve_loss_file(raw, Path.cwd())
    return validate_config(raw, source, overridden=override_keys(overrides or []))


def name_from_file(path: Path) -> str:
    """A config file without ``name:`` names its runs after itself (``robust.yaml``:
    ``robust-<time>``): accents dropped (``é`` is ``e``), other characters a run name
    cannot hold become ``-``, leading dots and dashes go; ``run`` when nothing is left."""
    ascii_stem = unicodedata.normalize("NFKD", path.stem).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", ascii_stem).lstrip(".-")[:MAX_NAME].rstrip("-")
    return name or "run"


def _resolve_loss_file(raw: dict[str, Any], folder: Path) -> None:
    """``loss.name: my_loss.py:MyHuber``: the file taken from ``folder`` (the config's, or
    the current one for an override), saved absolute."""
    loss = raw.get("loss")
    if isinstance(loss, dict) and isinstance(loss.get("name"), str):
        file, sep, cls = loss["name"].rpartition(":")
        if sep and file.endswith(".py"):
            loss["name"] = f"{_resolve_from(folder, file)}:{cls}"


def override_keys(overrides: list[str]) -> set[str]:
    """The dotted keys that ``overrides`` set."""
    return {item.partition("=")[0].strip() for item in overrides}


def _resolve_from(folder: Path, file: str) -> str:
    if "\x00" in file or not file:  # not a path: the schema refuses it by name
        return file
    p = user_path(file)
    return str(p if p.is_absolute() or "://" in file else (folder / p).resolve())


def user_path(text: str | Path) -> Path:
    """``text`` as a path, ``~`` and ``~user`` expanded as a shell does (a ``~user`` that
    does not exist stays as written). Every path a person gives goes through here."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # no such user, or no home folder
        return Path(text)


def validate_config(
    raw: dict[str, Any], source: str = "config", overridden: set[str] | None = None
) -> Config:
    """Validate a raw mapping; the problems are reported at once in one ConfigError line:
    those of keys in ``overridden`` after ``override:``, the others after ``source:``
    (nothing when ``source`` is empty). A line holds about ``PROBLEMS_WIDTH`` characters of
    problems; any beyond are counted (``and 3 more problems``), never a screenful."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        overridden = overridden or set()
        problems: dict[str, bool] = {}  # message -> from an override (a union's tries: one)
        hints: set[str] = set()  # a section's valid keys, listed once
        for err in exc.errors(include_url=False):
            key, message = _problem(err)
            hint = re.search(r" \(valid keys here: [^)]*\)$", message)
            if hint and hint.group(0) in hints:
                message = message[: hint.start()]
            hints.add(hint.group(0) if hint else "")
            from_override = bool(source) and any(
                key == k or key.startswith(k + ".") for k in overridden
            )
            problems.setdefault(message, from_override)
        raise ConfigError(_problems_line(problems, source)) from None


PROBLEMS_WIDTH = 250


def _problems_line(problems: dict[str, bool], source: str) -> str:
    shown: list[tuple[str, bool]] = []
    width = 0
    for message, from_override in problems.items():
        if shown and width + len(message) > PROBLEMS_WIDTH:
            break
        shown.append((message, from_override))
        width += len(message) + 2
    mine = [m for m, o in shown if not o]
    theirs = [m for m, o in shown if o]
    parts = [f"{source}: " * bool(source) + "; ".join(mine)] * bool(mine)
    parts += ["override: " + "; ".join(theirs)] * bool(theirs)
    more = len(problems) - len(shown)
    parts += [f"and {more} more problem{'s' * (more != 1)}"] * bool(more)
    return "; ".join(parts)


def describe_problem(err: dict[str, Any]) -> str:
    """One pydantic error as 'key constraint; got value', with did-you-mean for unknown keys."""
    return _problem(err)[1]


def _problem(err: dict[str, Any]) -> tuple[str, str]:
    """(the dotted key a person wrote, one short sentence about it) for a pydantic error.

    The error's location is read against the schema: union members' names (``bool``,
    ``literal['auto']``) and validator names are pydantic's, not keys, and a cross-key rule
    (a model validator, located at its section) is its own sentence, naming its keys."""
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    parts, annotation, union = _user_key(loc)
    key = _clip(".".join(parts), 80)
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return key, _unknown_key(parts)
    if loc and loc[-1] == "[key]":
        key = _clip(".".join(parts[:-1]), 80)
        return key, f"{key or 'config'} keys must be strings; got {_show(value)}"
    if union:
        return key, f"{key} must be {_accepted(annotation)}; got {_show(value)}"
    if kind == "value_error":
        msg = _clip(str(ctx.get("error", err["msg"])), 200)
        if _is_model(annotation):  # a cross-key rule: its sentence begins with its key
            lead = re.match(r"[a-z_]+(?:\.[a-z_]+)*", msg)
            return (lead.group(0) if lead else key), msg
        return key, f"{key} {msg}; got {_show(value)}"
    if kind == "missing":
        return key, f"{key} is required"
    constraint = _CONSTRAINTS.get(kind)
    if constraint is None:
        constraint = _clip(err["msg"][0].lower() + err["msg"][1:], 120)
    elif kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        constraint = f"must be {NAME_RULE}"
    else:
        constraint = constraint.format(**{k: _show_ctx(v) for k, v in ctx.items()})
    hint = ""
    if kind in ("string_type", "literal_error") and isinstance(value, bool | int | float):
        hint = " (YAML reads an unquoted yes/no/on/off/number as that; quote it to keep the text)"
    return key, f"{key or 'config'} {constraint}; got {_show(value)}{hint}"


def _user_key(loc: list[Any]) -> tuple[list[str], Any, bool]:
    """The key path a person wrote for an error location, the schema type found there, and
    whether the location went on into a union's members (pydantic's names, not keys)."""
    parts: list[str] = []
    annotation: Any = Config
    for part in loc:
        if part == "[key]":
            break
        annotation = _unwrap(annotation)
        if _is_model(annotation):
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field else None
        elif _union_members(annotation):
            return parts, annotation, True
        elif get_origin(annotation) in (list, dict):
            annotation = (get_args(annotation) or (None,))[-1]
        else:
            annotation = None
        parts.append(str(part))
    return parts, _unwrap(annotation), False


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` as X."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif len(members := _union_members(annotation, keep_none=False)) == 1:
            annotation = members[0]
        else:
            return annotation


def _union_members(annotation: Any, keep_none: bool = True) -> list[Any]:
    if get_origin(annotation) not in (Union, UnionType):
        return []
    return [a for a in get_args(annotation) if keep_none or a is not type(None)]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_TYPE_WORDS = {bool: ["true", "false"], int: ["an integer"], float: ["a number"],
               str: ["a string"], type(None): ["null"], list: ["a list"], dict: ["a mapping"]}  # fmt: skip


def _accepted(annotation: Any) -> str:
    """What a union key accepts, in words: ``true, false or 'auto'``."""
    words: list[str] = []
    for member in _union_members(annotation):
        member = _unwrap(member)
        if get_origin(member) is Literal:
            words += [repr(v) for v in get_args(member)]
        elif _is_model(member):
            words.append("a mapping")
        else:
            words += _TYPE_WORDS.get(get_origin(member) or member, ["a value"])
    words = list(dict.fromkeys(words))
    return ", ".join(words[:-1]) + " or " * (len(words) > 1) + words[-1]


_CONSTRAINTS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_long": "must have at most {max_length} characters",
    "too_short": "must have at least {min_length} items",
    "recursion_loop": "must not contain itself",
}


def _show_ctx(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return _clip(str(value), 80)


def _show(value: Any, width: int = 60) -> str:
    """A value as the user would write it, in at most about ``width`` characters (never
    expanding a huge value: a list is walked only as far as it is shown)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return _clip(repr(value[:width]), width)
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, list | tuple | set | frozenset):
        text = "["
        for i, item in enumerate(value):
            if len(text) >= width:
                return text + "...]"
            text += ", " * bool(i) + _show(item, width - len(text))
        return text + "]"
    return _clip(str(value), width)


def _clip(text: str, width: int = 60) -> str:
    """``text`` on one line (line breaks and other control characters escaped), cut to
    ``width`` characters with an ellipsis."""
    text = one_line(text[: width + 1], 4 * width)
    return text if len(text) <= width else text[: width - 3] + "..."


def _unknown_key(loc: list[str]) -> str:
    section: type[BaseModel] | None = Config
    for part in loc[:-1]:
        field = section.model_fields.get(part) if section else None
        ann = _unwrap(field.annotation) if field else None
        section = ann if _is_model(ann) else None
    where = _clip(".".join(loc), 40)
    known = list(section.model_fields) if section else []
    close = difflib.get_close_matches(loc[-1][:80], known, n=1, cutoff=0.6)
    hint = f" (did you mean '{'.'.join([*loc[:-1], close[0]])}'?)" if close else ""
    if not close and known:
        hint = f" (valid keys here: {', '.join(known)})"
    return f"unknown key '{where}'{hint}"


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the strings ``_Loader`` would read as numbers (``1e3``)."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def dump_config(config: Config) -> str:
    """The resolved config (every default filled in) as YAML, in schema order; read back
    by ``load_config`` it is the same config."""
    raw = config.model_dump(mode="json")
    if raw.get("sweep") is None:  # only a sweep's own config has one
        raw.pop("sweep", None)
    return yaml.dump(raw, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors (yaml-language-server)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "huberfit config"
    return schema


def starter_config(header: str = "") -> str:
    """The default config as YAML, every key commented with its meaning (``config init``)."""
    lines = [
        header
        or "# huberfit config: the built-in quickstart experiment. Run: huberfit train --config "
        "<this file>",
        "# Every key is optional; see `huberfit config schema` and the README for the reference.",
    ]
    defaults = Config().model_dump(mode="json")
    defaults["optimizer"]["lr"] = None  # null: follows optimizer.name if the user changes it
    for key, field in Config.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{key}:")
            for sub, subfield in ann.model_fields.items():
                lines.append(_commented(f"  {sub}", defaults[key][sub], subfield.description))
        else:
            lines.append(_commented(key, defaults[key], field.description))
    return "\n".join(lines) + "\n"


def _commented(key: str, value: Any, description: str | None) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    line = f"{key}: {text}"
    return f"{line:<34}# {description}" if description else line
