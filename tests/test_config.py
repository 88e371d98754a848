"""Config: strict schema, located messages, did-you-mean, overrides, the CLI config group."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from huberfit.cli import app
from huberfit.config import Config, load_config, starter_config
from huberfit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch():
    code = "import sys, huberfit.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = "import sys, huberfit.cli; print(sorted(m for m in sys.modules if m in ('numpy','pandas','torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "[]"


COMMANDS = [
    "train",
    "check-loss",
    "compare-losses",
    "sweep",
    "predict",
    "eval",
    "runs",
    "bench",
    "config",
]


def _listed_commands(help_text: str) -> list[str]:
    """The names in the help's Commands panel: each the first word of its own row (a
    substring check would find "train" in "training" or "trained" anyway)."""
    panel = help_text.split("Commands", 1)[1]
    return re.findall(r"^│ ([a-z][a-z-]*)  ", panel, re.M)


def test_help_lists_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert _listed_commands(result.output) == COMMANDS
    result = runner.invoke(app, ["config", "--help"])
    assert result.exit_code == 0, result.output
    assert _listed_commands(result.output) == ["show", "validate", "init", "schema"]


def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(files) > 0
    for file in files:
        first = file.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("#"), f"{file} must open with a comment"
        assert "huberfit " in file.read_text(encoding="utf-8").split("\n\n")[0], file
        load_config(file)


def test_defaults_are_the_contract():
    c = Config()
    assert (c.name, c.seed, c.device, c.dtype) == ("quickstart", 0, "auto", "float32")
    assert c.data.n_samples == 2000 and c.data.outlier_fraction == 0.1
    assert c.loss.name == "huber" and c.loss.delta == 1.0
    assert c.optimizer.name == "sgd" and c.optimizer.lr == 0.05
    assert c.train.batch_size == 64 and c.output.runs_dir == "runs"


def test_misspelt_section_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optimiser:\n  lr: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'optimiser' \(did you mean 'optimizer'\?\)"
    ):
        load_config(f)


def test_misspelt_key_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epoch: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.epoch' \(did you mean 'train.epochs'\?\)"
    ):
        load_config(f)


def test_three_bad_values_all_reported(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optimizer:\n  lr: -0.1\ntrain:\n  epochs: 0\nloss:\n  name: hubber\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    msg = str(info.value)
    assert "optimizer.lr must be > 0; got -0.1" in msg
    assert "train.epochs must be >= 1; got 0" in msg
    assert "loss.name must be one of" in msg and "'hubber'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "config file is empty"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("train:\n  epochs: [1\n", r"c.yaml:\d+:\d+: invalid YAML"),
        ("seed: '3'\n", "seed must be an integer; got '3'"),
        ("name: ../evil\n", "name must be ASCII letters, digits, '_', '-' and '.', beginning"),
        ("name: .hidden\n", "name must be ASCII letters"),
        ("name: -x\n", "name must be ASCII letters"),
        ("name: ünï\n", "name must be ASCII letters"),
        ("data:\n  source: csv\n", "data.path is required when data.source is csv"),
        ("data:\n  true_weights: [1, 2]\n", "must have n_features=3 values; got 2"),
        ("device: gpu\n", "device must match"),
        ("optimizer:\n  lr: 1e-3\n  nesterov: true\n", "nesterov needs optimizer.momentum > 0"),
    ],
)
def test_bad_files_one_line(tmp_path, text, expected):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(f)
    assert "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_scientific_notation_is_a_float(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optimizer:\n  lr: 1e-3\n")
    assert load_config(f).optimizer.lr == 1e-3


def test_overrides_parse_as_yaml_and_validate():
    c = load_config(None, ["optimizer.lr=0.5", "train.epochs=5", "data.true_weights=[1,2,3]"])
    assert c.optimizer.lr == 0.5 and c.train.epochs == 5 and c.data.true_weights == [1, 2, 3]
    with pytest.raises(ConfigError, match=r"did you mean 'optimizer.lr'"):
        load_config(None, ["optimizer.lrr=0.5"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["optimizer.lr"])
    with pytest.raises(ConfigError, match="seed must be an integer; got a mapping"):
        load_config(None, ["seed.x=1"])


def test_relative_data_path_is_relative_to_config(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "c.yaml"
    f.write_text("data:\n  source: csv\n  path: d.csv\n  target: y\n")
    assert load_config(f).data.path == str((tmp_path / "sub" / "d.csv").resolve())


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("robust.yaml", "robust"),
        ("my run!.yml", "my-run"),
        ("...yaml", "run"),
        ("ß.yaml", "run"),
        ("ünï cödé.yaml", "uni-code"),
        (".hidden.yaml", "hidden"),
        ("-x.yaml", "x"),
        ("é.yaml", "e"),
    ],
)
def test_a_config_without_name_names_its_runs_after_the_file(tmp_path, file, expected):
    (tmp_path / file).write_text("seed: 1\n")
    assert load_config(tmp_path / file).name == expected
    assert load_config(tmp_path / file, ["name=given"]).name == "given"
    (tmp_path / file).write_text("name: kept\n")
    assert load_config(tmp_path / file).name == "kept"
    assert load_config(None).name == "quickstart"


def test_cli_validate_show_and_errors(runner, tmp_path):
    qs = str(ROOT / "configs" / "quickstart.yaml")
    r = runner.invoke(app, ["config", "validate", "--config", qs])
    assert r.exit_code == 0 and r.output.strip() == "ok"
    r = runner.invoke(app, ["config", "show", "--config", qs, "optimizer.lr=0.5"])
    assert r.exit_code == 0
    assert yaml.safe_load(r.output)["optimizer"]["lr"] == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimiser: {lr: 1}\n")
    r = runner.invoke(app, ["config", "validate", "--config", str(bad)])
    assert r.exit_code == 1
    assert "unknown key 'optimiser' (did you mean 'optimizer'?)" in r.output
    assert "Traceback" not in r.output and "ok" not in r.output.split()


def test_cli_error_is_one_line_on_stderr(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimiser: {lr: 1}\n")
    p = subprocess.run(
        [sys.executable, "-m", "huberfit", "config", "validate", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "optimizer" in lines[0]
    p = subprocess.run(
        [sys.executable, "-m", "huberfit", "--debug", "config", "validate", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "Traceback" in p.stderr


def test_usage_error_exit_2(runner):
    assert runner.invoke(app, ["config", "show", "--nope"]).exit_code == 2


def test_schema_is_valid_json_schema_and_accepts_configs(runner):
    r = runner.invoke(app, ["config", "schema"])
    schema = json.loads(r.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for file in (ROOT / "configs").rglob("*.yaml"):
        validator.validate(yaml.safe_load(file.read_text()))
    assert list(validator.iter_errors({"optimiser": {}}))


def test_init_writes_a_valid_config_and_refuses_to_overwrite(runner, tmp_path):
    target = tmp_path / "mine.yaml"
    assert runner.invoke(app, ["config", "init", str(target)]).exit_code == 0
    assert load_config(target) == Config()
    r = runner.invoke(app, ["config", "init", str(target)])
    assert r.exit_code == 1 and "already exists" in r.output


def test_starter_config_round_trips():
    assert Config.model_validate(yaml.safe_load(starter_config())) == Config()


def test_loss_names_match_registry():
    from huberfit.config import BUILTIN_LOSSES
    from huberfit.losses import LOSSES

    assert set(BUILTIN_LOSSES) == set(LOSSES)


def test_string_overrides_stay_strings_and_round_trip(tmp_path, monkeypatch):
    """A value given for a string key is that string (YAML would read YES as true and 1e3 as
    a number), and ``config show`` writes it so that it reads back the same."""
    from huberfit.config import dump_config, load_config

    for text in ("YES", "no", "on", "off", "null", "1e3", "2024"):
        cfg = load_config(None, [f"data.target={text}", f"name=n{text}"])
        assert cfg.data.target == text
        saved = tmp_path / f"{text}.yaml"
        saved.write_text(dump_config(cfg))
        assert load_config(saved).data.target == text
    assert load_config(None, ["data.features=[yes,1e3]"]).data.features == ["yes", "1e3"]
    assert load_config(None, ["data.features=null"]).data.features is None
    monkeypatch.chdir(tmp_path)  # a relative data.path override is taken from here, and kept so
    cfg = load_config(None, ["data.source=csv", "data.path=d/x.csv", "data.target=y"])
    assert cfg.data.path == str(tmp_path / "d" / "x.csv")


def test_each_optimizer_gets_its_own_lr_unless_given():
    from huberfit.config import load_config

    assert load_config(None, ["optimizer.name=lbfgs"]).optimizer.lr == 1.0
    assert load_config(None, ["optimizer.name=adam"]).optimizer.lr == 0.01
    assert load_config(None, []).optimizer.lr == 0.05
    assert load_config(None, ["optimizer.name=lbfgs", "optimizer.lr=0.5"]).optimizer.lr == 0.5


def test_init_leaves_lr_to_the_optimizer(tmp_path):
    """config init writes lr: null, so switching optimizer.name in the file changes the lr."""
    from huberfit.config import load_config, starter_config

    path = tmp_path / "c.yaml"
    path.write_text(starter_config())
    assert load_config(path).optimizer.lr == 0.05
    assert load_config(path, ["optimizer.name=adam"]).optimizer.lr == 0.01
