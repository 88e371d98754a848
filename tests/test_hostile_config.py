"""Hostile config files and overrides: every input gives a Config or one short located line.

One test per cause found by trying huberfit as a hostile but fair user would (issue 16),
then a hypothesis fuzz of config text and overrides, and the same at the command line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from huberfit import cli
from huberfit.config import MAX_DEPTH, MAX_NAME, MAX_SEED, Config, load_config
from huberfit.errors import ConfigError, HuberfitError, RunError

# What a problem line may take, beyond the path it names: read, not scrolled.
WIDTH = 300


def _refused(tmp_path: Path, text: str | bytes, *overrides: str) -> str:
    """The one line a config file holding ``text`` (and ``overrides``) is refused with."""
    f = tmp_path / "c.yaml"
    f.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(ConfigError) as info:
        load_config(f, list(overrides))
    return _checked_line(str(info.value), str(f))


def _checked_line(message: str, source: str = "") -> str:
    assert "\n" not in message and "\r" not in message, message
    assert len(message.replace(source, "")) <= WIDTH, (len(message), message)
    return message


def _override_refused(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return _checked_line(str(info.value))


# ----------------------------------------------------------------------------- YAML text


def test_deep_nesting_is_refused_at_its_line_not_a_recursion_error(tmp_path):
    for text in ("[" * 450 + "]" * 450, "{a: " * 450 + "1" + "}" * 450, "[" * 5000):
        msg = _refused(tmp_path, f"data:\n  true_weights: {text}\n")
        assert re.search(
            rf"c.yaml:2:\d+: invalid YAML: nested deeper than {MAX_DEPTH} levels$", msg
        )
    msg = _override_refused("data.true_weights=" + "[" * 450 + "]" * 450)
    assert msg.startswith("override data.true_weights:1:") and "nested deeper" in msg
    msg = _override_refused("loss.kwargs." + ".".join(["a"] * 450) + "=1")
    assert f"keys nest at most {MAX_DEPTH} levels" in msg
    # a config's own depth (3) and a loss's nested kwargs stay well inside the bound
    assert load_config(None, ["loss.name=m:C", "loss.kwargs={a: {b: [[1]]}}"]).loss.kwargs


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(9):  # 10**10 values once expanded, from 500 bytes
        prev = "a" if i == 0 else f"b{i - 1}"
        lines.append(f"b{i}: &b{i} [" + ", ".join([f"*{prev}"] * 10) + "]")
    msg = _refused(tmp_path, "\n".join(lines) + "\ndata:\n  true_weights: *b8\n")
    assert "aliases expand this to more than 100,000 values" in msg and "c.yaml:" in msg
    # an alias that holds itself, and aliases that nest past the depth bound
    assert "refers to a node that contains it" in _refused(tmp_path, "a: &a [*a]\n")
    chain = "a0: &a0 " + "[" * 20 + "]" * 20 + "\n"
    chain += "".join(
        f"a{i}: &a{i} " + "[" * 20 + f"*a{i - 1}" + "]" * 20 + "\n" for i in range(1, 4)
    )
    assert "aliases nest this deeper than" in _refused(tmp_path, chain)
    # ordinary anchors and merges still work
    text = "base: &o {name: adam, lr: 0.1}\n"
    assert "unknown key 'base'" in _refused(tmp_path, text + "optimizer: {<<: *o, lr: 0.2}\n")
    f = tmp_path / "ok.yaml"
    f.write_text("data: {true_weights: &w [1, 2, 3]}\noptimizer: &o {name: adam}\n")
    assert load_config(f).data.true_weights == [1, 2, 3]


def test_too_many_values_stop_the_reading_where_they_pass_the_bound(tmp_path, monkeypatch):
    from huberfit import config

    monkeypatch.setattr(config, "MAX_VALUES", 1000)  # 100,000 takes PyYAML ~3 s to reach
    msg = _refused(tmp_path, "data:\n  features: [" + ",".join(["a"] * 5000) + "]\n")
    assert msg.endswith(
        "c.yaml:2:2004: invalid YAML: more than 1,000 values (a config needs a few dozen)"
    )


def test_config_path_must_be_a_regular_file_of_bounded_size(tmp_path):
    with pytest.raises(ConfigError, match=r"not a regular file \(a device\?\): /dev/zero$"):
        load_config("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"seed: 1\n" + b" " * (1 << 20))
    with pytest.raises(ConfigError, match=r"larger than 1 MiB: .*big.yaml"):
        load_config(big)
    if hasattr(os, "mkfifo"):  # a pipe (--config <(...)) is read, within the same bound
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        writer = threading.Thread(target=fifo.write_text, args=("seed: 7\n",))
        writer.start()  # blocks until the config is opened for reading
        assert load_config(fifo).seed == 7
        writer.join()


def test_duplicate_keys_are_refused_naming_the_key_and_both_lines(tmp_path):
    msg = _refused(tmp_path, "train:\n  epochs: 3\n  batch_size: 8\n  epochs: 5\n")
    assert msg.endswith(
        "c.yaml:4:3: invalid YAML: duplicate key 'train.epochs' (lines 2 and 4); keep one"
    )
    msg = _refused(tmp_path, "seed: 1\ntrain: {epochs: 2}\nseed: 2\n")
    assert "duplicate key 'seed' (lines 1 and 3)" in msg
    f = tmp_path / "merge.yaml"  # a key given beside a merge (<<) is not a duplicate
    f.write_text("optimizer: {<<: {name: adam, lr: 0.1}, lr: 0.2}\n")
    assert load_config(f).optimizer.lr == 0.2


def test_nul_bytes_and_other_encodings_get_a_line_and_column(tmp_path):
    msg = _refused(tmp_path, "train:\n  epochs: 3\x00\n")
    assert msg.endswith(
        "c.yaml:2:12: invalid YAML: character U+0000 is not allowed (a binary file?)"
    )
    msg = _refused(tmp_path, b"seed: 1\nname: caf\xe9\n")
    assert msg.endswith("c.yaml:2:10: not UTF-8 text (byte 0xe9); save the config as UTF-8")


def test_values_yaml_cannot_build_are_located(tmp_path):
    for text, what in [("seed: 2024-13-01\n", "timestamp: month must be in 1..12"),
                       ("seed: !!int x\n", "int: invalid literal"), ("seed: !!bool x\n", "bool"),
                       ("seed: " + "9" * 5000 + "\n", "int: Exceeds the limit")]:  # fmt: skip
        assert f"c.yaml:1:7: invalid YAML: cannot read this as {what}" in _refused(tmp_path, text)


def test_a_key_or_value_with_line_breaks_stays_on_one_line(tmp_path):
    assert "unknown key 'a\\nb\\u2028'" in _refused(tmp_path, '"a\\nb\\u2028": 1\n')
    assert r"got 'x\ny'" in _override_refused("device=x\ny")
    assert "\n" not in str(HuberfitError("two\nlines")) and len(str(RunError("x" * 10**6))) <= 1000


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "key",
    ["data.noise_std", "data.outlier_scale", "data.true_bias", "optimizer.weight_decay",
     "scheduler.min_lr", "optimizer.lr", "loss.quantile", "data.outlier_fraction"],
)  # fmt: skip
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e999"])
def test_non_finite_floats_are_refused_by_key(key, value):
    msg = _override_refused(f"{key}={value}")
    assert msg.startswith(f"{key} must be a finite number; got "), msg


@pytest.mark.parametrize(
    "override, expected",
    [("optimizer.lr=1e39", "optimizer.lr must be <= 3.40282e+38"),
     ("optimizer.weight_decay=1e308", "optimizer.weight_decay must be <= 3.40282e+38"),
     ("scheduler.min_lr=1e308", "scheduler.min_lr must be <= 3.40282e+38"),
     ("loss.delta=1e308", "loss.delta must be a finite number > 0 (at most 3.4028e+38)"),
     ("data.noise_std=1e160", "data.noise_std must be <= 1e+100"),
     ("data.true_bias=-1e308", "data.true_bias must be >= -1e+100"),
     ("data.true_weights=[1, 1e200, 3]", "data.true_weights.1 must be <= 1e+100")],
)  # fmt: skip
def test_finite_values_that_would_overflow_are_refused_by_key(override, expected):
    # they crashed torch's float32 kernels ("cannot be converted to type float without
    # overflow"), or overflowed the synthetic target's scale into a HuberLoss ValueError
    assert _override_refused(override).startswith(expected)


def test_non_finite_true_weights_are_refused_by_item():
    assert _override_refused("data.true_weights=[1, .nan, 2]").startswith(
        "data.true_weights.1 must be a finite number; got nan"
    )


def test_seeds_beyond_63_bits_are_refused_and_the_largest_shuffles():
    from huberfit.data.batches import InMemoryBatches

    msg = _override_refused(f"seed={2**64}")
    assert msg == f"seed must be <= {MAX_SEED}; got {2**64}"
    assert "an integer of" in _override_refused(f"seed={2**400}")
    import torch

    X = torch.zeros(10, 1)  # the largest seed's epoch order is a permutation, not an overflow
    order = InMemoryBatches(X, X, 4, load_config(None, [f"seed={MAX_SEED}"]).seed).order(3)
    assert sorted(order.tolist()) == list(range(10))


@pytest.mark.parametrize("key", ["train.grad_accum_steps", "optimizer.history_size",
                                 "train.epochs", "data.memory_budget_mb"])  # fmt: skip
def test_integers_beyond_64_bits_are_refused_by_key(key):
    # they crashed torch or Python mid-run (islice, an index-sized integer)
    assert _override_refused(f"{key}={10**20}").startswith(f"{key} must be <= ")


def test_lbfgs_history_is_bounded():
    # torch's L-BFGS allocates a list of history_size entries at every step
    assert load_config(None, ["optimizer.history_size=10000"]).optimizer.history_size == 10000
    assert _override_refused("optimizer.history_size=10001").startswith(
        "optimizer.history_size must be <= 10000; got 10001"
    )


def test_sizes_that_cannot_fit_are_refused_before_allocating():
    from huberfit.data.dataset import load_data

    cfg = load_config(None, ["data.n_samples=1000000000000"])
    with pytest.raises(ConfigError) as info:
        load_data(cfg.data, cfg.seed)
    msg = _checked_line(str(info.value))
    assert msg.startswith("data.n_samples=1000000000000 x data.n_features=3 needs about 128 TB")
    assert "this machine has" in msg and "smaller data.n_samples" in msg


def test_sizes_from_files_suggest_streaming(tmp_path, monkeypatch):
    from huberfit.data import dataset

    (tmp_path / "d.csv").write_text("a,y\n1,2\n2,3\n3,4\n")
    monkeypatch.setattr(dataset, "memory_budget_mb", lambda _: 1e-6)  # a tiny machine
    cfg = load_config(None, ["data.source=csv", f"data.path={tmp_path / 'd.csv'}",
                             "data.target=y", "data.streaming=false"])  # fmt: skip
    with pytest.raises(ConfigError, match="set data.streaming: auto or true to stream"):
        dataset.load_data(cfg.data, cfg.seed)


def test_names_over_the_file_system_limit_are_refused_at_config_time(tmp_path):
    assert load_config(None, [f"name={'n' * MAX_NAME}"]).name == "n" * MAX_NAME
    msg = _override_refused(f"name={'n' * 300}")
    assert msg.startswith(f"name must have at most {MAX_NAME} characters; got 'nnn")
    from huberfit.artifacts import make_run_dir  # and a folder the system refuses: one line

    with pytest.raises(RunError, match="cannot create run folder .*: File name too long"):
        make_run_dir(tmp_path, "n" * 300)


def test_name_option_takes_the_text_as_typed(runner, monkeypatch):
    seen: list[Config] = []
    monkeypatch.setattr(cli, "_run_training", lambda cfg, *a: seen.append(cfg))
    monkeypatch.setattr(cli, "_run_comparison", lambda cfg, *a: seen.append(cfg))
    for argv in (["train", "--name", "2024"], ["compare-losses", "--name", "2024"],
                 ["train", "--name", "yes"], ["train", "--name", "1e3"]):  # fmt: skip
        result = runner.invoke(cli.app, argv)
        assert result.exit_code == 0, result.output
    assert [c.name for c in seen] == ["2024", "2024", "yes", "1e3"]


def test_runs_dir_expands_the_home_folder(tmp_path, monkeypatch):
    from huberfit.artifacts import make_run_dir
    from huberfit.runs import list_runs

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    runs_dir = load_config(None, ["output.runs_dir=~/exp"]).output.runs_dir
    made = make_run_dir(runs_dir, "n")
    assert made.parent == tmp_path / "home" / "exp" and not (tmp_path / "~").exists()
    assert [row["name"] for row in list_runs("~/exp")] == [made.name]  # the same folder


def test_paths_with_a_nul_or_an_unknown_user_are_named_not_crashed(tmp_path, monkeypatch):
    # YAML's "\\0" escape and the Python API can put a NUL where the OS refuses one
    msg = _refused(tmp_path, 'data: {source: csv, path: "a\\0b", target: y}\n')
    assert msg.endswith("c.yaml: data.path must not contain a NUL character; got 'a\\x00b'")
    assert "loss.name must not contain a NUL" in _override_refused("loss.name=a\x00.py:C")
    monkeypatch.chdir(tmp_path)  # ~nosuchuser stays as written, as a shell leaves it
    cfg = load_config(None, ["data.path=~nosuchuser/d.csv", "loss.name=~nosuchuser/m.py:C"])
    assert cfg.data.path == str(tmp_path / "~nosuchuser" / "d.csv")
    assert cfg.loss.name == f"{tmp_path / '~nosuchuser' / 'm.py'}:C"


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--device", ""], "--device is empty; use auto, cpu, cuda, cuda:N or mps"),
        (["train", "--runs-dir", ""], "--runs-dir is empty; give a value, or leave --runs-dir out for its default"),
        (["train", "--name", " "], "--name is empty; give a value, or leave --name out for its default"),
        (["compare-losses", "--runs-dir", ""], "--runs-dir is empty; give a value, or leave --runs-dir out for its default"),
        (["sweep", "--study", "", "optimizer.lr=0.1,0.2"], "--study is empty; give a value, or leave --study out for its default"),
        (["predict", "--run", ".", "--input", ""], "--input is empty; give a value"),
        (["predict", "--run", ".", "--input", "x.csv", "-o", ""], "--output is empty; give a value, or leave --output out for its default"),
        (["eval", "--run", ".", "--input", ""], "--input is empty; give a value"),
        (["train", "--config", ""], "--config is empty; give a value, or leave --config out for its default"),
        (["train", "--resume", ""], "--resume is empty; give a value"),
        (["sweep", "--resume", ""], "--resume is empty; give a value"),
        (["compare-losses", "--config", " "], "--config is empty; give a value, or leave --config out for its default"),
        (["config", "show", "--config", ""], "--config is empty; give a value, or leave --config out for its default"),
        (["config", "validate", "--config", ""], "--config is empty; give a value, or leave --config out for its default"),
        (["config", "init", ""], "config init: the path is empty; give a file name, or none for huberfit.yaml"),
        (["predict", "--run", "", "--input", "x.csv"], "--run is empty; give a value"),
        (["eval", "--run", "", "--input", "x.csv"], "--run is empty; give a value"),
        (["runs", "--runs-dir", ""], "--runs-dir is empty; give a value, or leave --runs-dir out for its default"),
        (["bench", "--stream-gb", "0.01", "--folder", ""], "--folder is empty; give a value, or leave --folder out for its default"),
        (["train", "--config", "c.yaml"], "c.yaml: output.runs_dir is empty; give a path ('.' is the current folder); got ''"),
        (["train", "data.source=csv", "data.target=y", "--config", "d.yaml"], "d.yaml: data.path is empty; give a path ('.' is the current folder); got ''"),
    ],
)  # fmt: skip
def test_empty_options_and_paths_are_refused_not_taken_for_defaults(
    runner, tmp_path, monkeypatch, args, expected
):
    """``--device ''`` silently meant auto, ``--runs-dir ''`` the default, an empty
    runs_dir or data.path the current folder (or the config's, read as a data folder), and
    an empty path option (``--config ''``, ``--run ''``) the current folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text('output:\n  runs_dir: ""\n')
    (tmp_path / "d.yaml").write_text('data:\n  path: ""\n')
    r = runner.invoke(cli.app, args)
    assert r.exit_code == 1 and r.output == f"error: {expected}\n", r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "d.yaml"]  # nothing made


def test_an_empty_runs_dir_is_refused_from_python_too(tmp_path, monkeypatch):
    import huberfit

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunError, match="the runs folder is empty"):
        huberfit.train(runs_dir="", overrides=["train.epochs=1"], quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_overrides_leave_the_callers_mapping_and_shared_anchors_alone(tmp_path):
    from huberfit.api import _config

    mine = {"optimizer": {"lr": 0.1}}
    assert _config(mine, ["optimizer.lr=0.2"]).optimizer.lr == 0.2
    assert mine == {"optimizer": {"lr": 0.1}}
    f = tmp_path / "c.yaml"  # one anchored mapping used twice: an override changes one use
    f.write_text("data: &d {true_weights: [1, 2, 3]}\nloss: {name: m:C, kwargs: *d}\n")
    cfg = load_config(f, ["data.true_weights=[4, 5, 6]"])
    assert cfg.loss.kwargs == {"true_weights": [1, 2, 3]}


def test_empty_dotted_parts_are_named():
    for key in ("data..x", ".seed", "data."):
        msg = _override_refused(f"{key}=1")
        assert msg == f"override {key}: a dotted key has no empty parts (write it as data.path)"


def test_union_keys_are_one_sentence_naming_the_accepted_values(tmp_path):
    assert _override_refused("data.streaming=maybe") == (
        "data.streaming must be true, false or 'auto'; got 'maybe'"
    )
    msg = _refused(tmp_path, "data:\n  streaming: 3\n")
    assert msg.endswith("c.yaml: data.streaming must be true, false or 'auto'; got 3")


def test_cross_key_rules_read_cleanly_and_name_their_source(tmp_path):
    f = tmp_path / "c.yaml"
    for text, expected in [
        ("data:\n  true_weights: [1, 2]\n", "data.true_weights must have n_features=3 values; got 2"),
        ("data:\n  source: csv\n", "data.path is required when data.source is csv"),
        ("optimizer:\n  nesterov: true\n", "optimizer.nesterov needs optimizer.momentum > 0"),
        ("data:\n  val_fraction: 0\ntrain:\n  early_stopping_patience: 2\n",
         "train.early_stopping_patience needs data.val_fraction > 0"),
    ]:  # fmt: skip
        f.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(f)
        assert str(info.value) == f"{f}: {expected}"
    # the rule's own key decides whose problem it is: the file's, though an override
    # touched the same section
    f.write_text("data:\n  true_weights: [1, 2]\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, ["data.noise_std=1"])
    assert str(info.value).startswith(f"{f}: data.true_weights must")
    with pytest.raises(ConfigError, match=r"^override: data.true_weights must have"):
        load_config(f, ["data.true_weights=[1]"])


def test_many_problems_are_counted_not_listed(tmp_path):
    text = "".join(f"junk{i}: 1\n" for i in range(50))
    msg = _refused(tmp_path, text)
    assert msg.count("unknown key") >= 1 and msg.endswith("more problems")


def test_every_command_reads_configs_and_overrides_through_one_loader(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nseed: 2\n")
    for argv in (["config", "show"], ["config", "validate"], ["train"], ["compare-losses"]):
        result = runner.invoke(cli.app, [*argv, "--config", str(bad)])
        assert result.exit_code == 1 and "duplicate key 'seed'" in result.output, argv
        result = runner.invoke(cli.app, [*argv, "data..x=1"])
        assert result.exit_code == 1 and "no empty parts" in result.output, argv


# ----------------------------------------------------------------------------- the fuzz

KEYS = ["name", "seed", "device", "dtype", "data", "data.source", "data.n_samples",
        "data.n_features", "data.noise_std", "data.true_weights", "data.path", "data.target",
        "data.features", "data.streaming", "data.memory_budget_mb", "loss", "loss.name",
        "loss.kwargs", "loss.delta", "optimizer.name", "optimizer.lr", "optimizer.nesterov",
        "optimizer.momentum", "scheduler.min_lr", "train.epochs", "train.batch_size",
        "train.early_stopping_patience", "output.runs_dir"]  # fmt: skip
ODD = [".nan", ".inf", "-.inf", "1e999", "1e-3", "0x1F", "0o7", "2024-13-01", "2024-01-01",
       "!!int x", "!!binary aGk=", "!!set {a}", "~", "null", "yes", "off", "~/x", "'q'",
       '"\\x00"', "9" * 400, "-1", "0", "3", "0.5", "auto", "csv", "huber", "a.py:C", "[]",
       "{}", "[1, 2, 3]", "{a: 1}", "&a [1, 2]", "*a", "*zz", "<<: *a", "é", "\u2028",
       "\x00", "\t", "'unterminated", "[1,", "- x", "? [a]", "!foo x", "%YAML 1.1"]  # fmt: skip

words = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
key = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), st.sampled_from(KEYS), words)
scalar = st.one_of(st.sampled_from(ODD), st.sampled_from(ODD), st.sampled_from(ODD), words)
nested = st.integers(0, 60).flatmap(
    lambda k: st.sampled_from(["[" * k + "]" * k, "{a: " * k + "1" + "}" * k, "[" * k])
)
value = st.one_of(scalar, scalar, nested)


def _render(entries: list[tuple[str, str, bool]]) -> str:
    """Config text: top-level keys, then each section once with its keys indented."""
    sections: dict[str, list[str]] = {}
    for k, v, anchor in entries:
        section, _, sub = k.rpartition(".")
        sections.setdefault(section, []).append(f"{sub if section else k}: {'&r ' * anchor}{v}")
    lines = sections.pop("", [])
    for section, keys in sections.items():
        lines += [f"{section}:"] + [f"  {line}" for line in keys]
    return "\n".join(lines)


anchor = st.sampled_from([False] * 5 + [True])
yaml_text = st.lists(st.tuples(key, value, anchor), max_size=8).map(_render)
junk = st.sampled_from([b""] * 6 + [b"\x00", b"\xff\xfe", b"\r\n", b"\n\t-", b"\n&r x: *r"])


@settings(
    max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=yaml_text, junk=junk)
def test_fuzz_config_text_gives_a_config_or_one_short_line(tmp_path, text, junk):
    f = tmp_path / "c.yaml"
    f.write_bytes(text.encode("utf-8", "surrogatepass") + junk)
    try:
        assert isinstance(load_config(f), Config)
    except HuberfitError as exc:
        _checked_line(str(exc), str(f))


@settings(max_examples=120, deadline=2000)
@given(overrides=st.lists(st.tuples(key, value).map("=".join), max_size=4))
def test_fuzz_overrides_give_a_config_or_one_short_line(overrides):
    try:
        assert isinstance(load_config(None, overrides), Config)
    except HuberfitError as exc:
        _checked_line(str(exc))


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_hostile_configs_exit_1_with_one_error_line(tmp_path):
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"b{i}: &b{i} [" + ",".join([f"*{'a' if i == 0 else f'b{i - 1}'}"] * 10) + "]\n"
        for i in range(8)
    )
    cases = {
        "deep.yaml": "data:\n  true_weights: " + "[" * 450 + "]" * 450 + "\n",
        "bomb.yaml": bomb + "data:\n  true_weights: *b7\n",
        "dup.yaml": "seed: 1\nseed: 2\n",
        "nul.yaml": "seed: 1\x00\n",
    }
    argvs = [["config", "validate", "--config", "/dev/zero"],
             ["train", "data.noise_std=.nan"], ["train", "--name", "n" * 300],
             ["config", "show", "data.streaming=maybe"]]  # fmt: skip
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        argvs.append(["train", "--config", str(tmp_path / name)])
    for argv in argvs:
        p = subprocess.run([sys.executable, "-m", "huberfit", *argv], capture_output=True,
                           text=True, cwd=tmp_path, timeout=60)  # fmt: skip
        lines = p.stderr.splitlines()
        assert p.returncode == 1 and p.stdout == "", (argv, p.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, p.stderr[-2000:])
        assert len(lines[0]) < 400 and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()  # refused before any run folder


def test_a_delta_below_what_the_dtype_holds_after_scaling_is_refused(tmp_path, runner):
    """Huber trains in standardized units: a target scale of 1e100 makes delta 1e-100 there,
    0 in float32, and the loss and its gradient 0 (it trained a 'loss' of exactly 0)."""
    from huberfit.cli import app

    args = ["train", "--runs-dir", str(tmp_path / "runs"), "-q", "data.noise_std=1e100",
            "train.epochs=1", "output.images=false", "output.tensorboard=false"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert re.fullmatch(r"error: loss\.delta=1 is [0-9.e+-]+ of the target's scale \([0-9.e+]+\), "
                        r"below what float32 holds \([0-9.e+-]+\): use dtype=float64 or a larger "
                        r"loss\.delta\n", r.stderr)  # fmt: skip
    assert not (tmp_path / "runs").exists()
    r = runner.invoke(app, [*args, "dtype=float64", "--json"])
    assert r.exit_code == 0, r.output
