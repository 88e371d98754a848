"""The user's files and what is printed, under hostile but fair use: predict never replaces
or changes an input, refuses what it cannot write before writing anything and leaves
nothing half-written; paths, names and statuses are shown as they are (never Rich markup);
``runs`` survives any JSON; ``--json`` is JSON; a full disk ends a run with one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write

from huberfit import predict as predict_mod
from huberfit.cli import app
from huberfit.errors import RunError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A small trained run on features x1, x2 of a table that also has an id and a note."""
    import huberfit

    folder = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    frame = pd.DataFrame({"id": [f"{i:03d}" for i in range(60)], "x1": X[:, 0], "x2": X[:, 1],
                          "y": X @ [1.0, -2.0] + 0.5})  # fmt: skip
    frame.to_csv(folder / "train.csv", index=False)
    result = huberfit.train(
        {"data": {"source": "csv", "path": str(folder / "train.csv"), "target": "y",
                  "features": ["x1", "x2"], "val_fraction": 0},
         "train": {"epochs": 2}, "output": {"tensorboard": False, "images": False}},
        runs_dir=folder / "runs", quiet=True,
    )  # fmt: skip
    return Path(result.run_dir)


def _error_line(result) -> str:
    """The one ``error:`` line a failed command printed (and nothing like a traceback)."""
    assert result.exit_code == 1, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


INPUT = "id,x1,x2,note\n007,1.50,2,NA\n008,1e3,-0.5,\n009, 3,4,x;y\n"


# ----------------------------------------------------------------------------- predict


def test_predict_never_replaces_an_input(run_dir, tmp_path, runner):
    """By its name, another spelling of it, a symbolic link or a hard link: refused even
    with --overwrite, and the input is unchanged."""
    data = write(tmp_path / "in.csv", INPUT)
    os.symlink(data, tmp_path / "soft.csv")
    os.link(data, tmp_path / "hard.csv")
    (tmp_path / "sub").mkdir()
    for out in (data, tmp_path / "sub" / ".." / "in.csv", tmp_path / "soft.csv",
                tmp_path / "hard.csv"):  # fmt: skip
        for extra in ([], ["--overwrite"]):
            r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(data),
                                    "-o", str(out), *extra])  # fmt: skip
            assert "is the input file" in _error_line(r)
            assert data.read_text() == INPUT
    # an input found in a folder is an input too
    folder = tmp_path / "many"
    folder.mkdir()
    write(folder / "a.csv", INPUT)
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(folder),
                            "-o", str(folder / "a.csv"), "--overwrite"])  # fmt: skip
    assert "is the input file" in _error_line(r) and (folder / "a.csv").read_text() == INPUT
    assert _leftovers(tmp_path) == [] and _leftovers(folder) == []


def test_predict_overwrites_an_existing_file_only_when_asked(run_dir, tmp_path, runner):
    data = write(tmp_path / "in.csv", INPUT)
    out = write(tmp_path / "out.csv", "precious\n")
    args = ["predict", "--run", str(run_dir), "--input", str(data), "-o", str(out)]
    assert "--overwrite" in _error_line(runner.invoke(app, args))
    assert out.read_text() == "precious\n"
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert list(pd.read_csv(out).columns) == ["id", "x1", "x2", "note", "prediction"]


def test_predict_copies_every_cell_as_it_was(run_dir, tmp_path, runner):
    """CSV cells are written back as their text (``007``, ``1.50``, ``NA``, empty), and a
    Parquet file's columns keep their types (integers with nulls stay integers)."""
    data = write(tmp_path / "in.csv", INPUT)
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(data)])
    assert r.exit_code == 0, r.output
    got = [line.rsplit(",", 1)[0] for line in r.stdout.splitlines()]
    expected = INPUT.replace(", 3", ",3").splitlines()  # a space after a comma is a separator
    assert got == [expected[0], *expected[1:]], r.stdout
    table = pa.table({"id": pa.array([7, None, 9], pa.int64()), "x1": [1.5, 2.0, 3.0],
                      "x2": [0.0, 1.0, 2.0], "when": pa.array([1, 2, 3], pa.int32())})  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet")
    for out in ("out.parquet", "out.csv"):
        r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input",
                                str(tmp_path / "in.parquet"), "-o", str(tmp_path / out)])  # fmt: skip
        assert r.exit_code == 0, r.output
    written = pq.read_table(tmp_path / "out.parquet")
    assert written.select(["id", "x1", "x2", "when"]).equals(table)
    assert (tmp_path / "out.csv").read_text().splitlines()[2].startswith(",2.0,1.0,2,")


def _refused_predict(runner, run_dir: Path, source: Path, out: Path, tmp_path: Path) -> str:
    """``predict`` of ``source`` into ``out`` refused in one line, writing nothing."""
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(source), "-o",
                            str(out)])  # fmt: skip
    line = _error_line(r)
    assert not out.exists() and _leftovers(tmp_path) == []
    return line


def test_predict_refuses_inputs_whose_columns_differ(run_dir, tmp_path, runner):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "a.csv", "id,x1,x2\n1,0,0\n")
    write(folder / "b.csv", "id,x1,x2,extra\n2,0,0,9\n")
    write(folder / "c.csv", "x2,x1,id\n0,0,3\n")
    out = tmp_path / "out.csv"
    line = _refused_predict(runner, run_dir, folder, out, tmp_path)
    assert "b.csv" in line and "extra column 'extra'" in line and "a.csv" in line
    (folder / "b.csv").unlink()
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(folder)])
    assert "c.csv" in _error_line(r) and "another order" in r.stderr
    assert r.stdout == ""  # nothing written before the check


def test_predict_output_must_be_a_file_in_an_existing_folder(run_dir, tmp_path, runner):
    data = write(tmp_path / "in.csv", INPUT)
    (tmp_path / "looks.csv").mkdir()
    cases = {str(tmp_path): "is a folder", str(tmp_path / "looks.csv"): "is a folder",
             str(tmp_path / "no" / "x.csv"): "does not exist",
             str(data / "x.csv"): "is not a folder", str(tmp_path / "x.txt"): ".csv or .parquet"}  # fmt: skip
    for out, words in cases.items():
        r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(data), "-o", out])
        assert words in _error_line(r), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "looks.csv"]


def test_parquet_output_whose_types_differ_is_refused_whole(run_dir, tmp_path, runner):
    """One column an integer in one file and text in the next: one line naming both files
    and the column, and no output or temporary file."""
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(
        pa.table({"id": [1, 2], "x1": [0.0, 1.0], "x2": [1.0, 2.0]}), folder / "a.parquet"
    )
    pq.write_table(pa.table({"id": ["a", "b"], "x1": [0.0, 1.0], "x2": [1.0, 2.0]}),
                   folder / "b.parquet")  # fmt: skip
    line = _refused_predict(runner, run_dir, folder, tmp_path / "out.parquet", tmp_path)
    assert "b.parquet" in line and "'id'" in line and "a.parquet" in line


def test_predict_stopped_midway_leaves_nothing(run_dir, tmp_path, monkeypatch):
    """A bad cell in a later chunk, or SIGTERM while writing: no output, no temporary
    file (SIGTERM ends it as Ctrl-C does)."""
    trained = predict_mod.load_run(run_dir)
    data = write(tmp_path / "in.csv", "id,x1,x2\n" + "1,0,0\n" * 30 + "2,zz,0\n")
    monkeypatch.setattr(predict_mod, "CHUNK_ROWS", 10)
    out = tmp_path / "out.csv"
    with pytest.raises(Exception, match="non-numeric value 'zz'"):
        predict_mod.predict_file(trained, str(data), str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]

    real = predict_mod._chunks

    def terminated_after_one_chunk(files, run):
        chunks = real(files, run)
        yield next(chunks)
        os.kill(os.getpid(), signal.SIGTERM)
        yield from chunks

    monkeypatch.setattr(predict_mod, "_chunks", terminated_after_one_chunk)
    before = signal.getsignal(signal.SIGTERM)
    for name in ("out.csv", "out.parquet"):
        with pytest.raises(KeyboardInterrupt):
            predict_mod.predict_file(trained, str(data), str(tmp_path / name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- printing


def test_user_text_is_shown_as_it_is_never_as_markup(run_dir, tmp_path, runner):
    """Folder names, column names, statuses and losses with ``[...]`` or ``:...:``."""
    csv = write(
        tmp_path / "d.csv", "[bold]x[/],y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(12))
    )
    for runs in ("exp[a]", "o[/x]", "e:smile:"):
        r = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / runs), "data.source=csv",
                                f"data.path={csv}", "data.target=y", "train.epochs=1",
                                "output.tensorboard=false", "output.images=false"])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert f"run folder: {tmp_path / runs}/" in r.stdout
        assert "[bold]x[/]" in r.stdout  # the column's name in the coefficients table
    (folder,) = (tmp_path / "exp[a]").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "status": "[/]", "loss": "[red]"}))
    r = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "exp[a]")])
    assert r.exit_code == 0, r.output
    assert (
        f"runs in {tmp_path / 'exp[a]'}" in r.stdout and "[/]" in r.stdout and "[red]" in r.stdout
    )
    r = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "none[/x]")])
    assert r.exit_code == 0 and f"no runs in {tmp_path / 'none[/x]'}" in r.stdout
    out = tmp_path / "o[/x]" / "p[:smile:].csv"
    data = write(tmp_path / "in[1].csv", INPUT)  # an existing file, not a glob
    r = runner.invoke(app, ["predict", "--run", str(run_dir), "--input", str(data), "-o", str(out)])
    assert r.exit_code == 0 and f"to {out}" in r.stderr, r.output


def test_runs_lists_unexpected_json_as_unreadable(tmp_path, runner):
    """Well-formed JSON of another shape in metrics.json or comparison.json: a row that says
    what is wrong, never a crash; ``--json`` stays JSON."""
    files = {
        "list": ("metrics.json", "[1, 2]"),
        "status-list": ("metrics.json", '{"status": ["done"]}'),
        "loss-number": ("metrics.json", '{"status": "completed", "loss": 5}'),
        "val-text": ("metrics.json", '{"status": "completed", "val": {"loss": "low"}}'),
        "val-list": ("metrics.json", '{"status": "completed", "val": [1]}'),
        "no-status": ("metrics.json", '{"loss": "huber"}'),
        "deep": ("metrics.json", "[" * 100_000 + "]" * 100_000),
        "cmp-list": ("comparison.json", "[]"),
        "cmp-verdict": ("comparison.json", '{"verdict": {"a": 1}}'),
        "latin1": ("metrics.json", b'{"status": "\xe9"}'),
    }
    for name, (file, text) in files.items():
        (tmp_path / name).mkdir()
        path = tmp_path / name / file
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    (tmp_path / "fine").mkdir()
    write(tmp_path / "fine" / "metrics.json",
          '{"status": "completed", "delta": NaN, "coefficients": {}}')  # fmt: skip
    r = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = json.loads(runner.invoke(app, ["runs", "--runs-dir", str(tmp_path), "--json"]).stdout,
                      parse_constant=_no_constants)  # fmt: skip
    status = {row["name"]: row["status"] for row in rows}
    assert status == {**{name: "unreadable" for name in files}, "fine": "completed"}
    detail = {row["name"]: row.get("detail", "") for row in rows}
    assert "'loss' is a whole number, expected a string" in detail["loss-number"]
    assert "'verdict' is an object" in detail["cmp-verdict"]


def _no_constants(token: str):
    raise AssertionError(f"not JSON: {token}")


def test_json_output_is_json(run_dir, tmp_path, runner):
    """``--json`` writes non-finite numbers as null, as metrics.json does, with one writer."""
    data = write(tmp_path / "flat.csv", "x1,x2,y\n1,2,3\n2,3,3\n")  # constant target: R^2 NaN
    r = runner.invoke(app, ["eval", "--run", str(run_dir), "--input", str(data), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout, parse_constant=_no_constants)["r2"] is None
    r = runner.invoke(app, ["train", "--json", "--quiet", "--runs-dir", str(tmp_path / "runs"),
                            "loss.name=mse", "optimizer.lr=1e6", "train.epochs=3",
                            "output.tensorboard=false", "output.images=false"])  # fmt: skip
    assert r.exit_code == 1  # diverged
    printed = json.loads(r.stdout, parse_constant=_no_constants)
    (folder,) = (tmp_path / "runs").iterdir()
    assert printed == json.loads(
        (folder / "metrics.json").read_text(), parse_constant=_no_constants
    )


# ----------------------------------------------------------------------------- compare, bench


def test_compare_losses_checks_every_run_before_any_folder(tmp_path, runner, monkeypatch):
    from huberfit import compare
    from huberfit.config import validate_config
    from huberfit.metrics import delta_label

    for delta in (1e300, 1e-320, 5e-324, 0.5, 1e16):  # labels are valid run names
        validate_config({"name": delta_label("huber", delta)}, "label")
    monkeypatch.setattr(compare, "delta_label", lambda loss, d: f"{loss} d{d}")
    for extra in (["--losses", ","], ["--losses", "huber,nope"], ["--deltas", "0.5,2"]):
        r = runner.invoke(app, ["compare-losses", "--runs-dir", str(tmp_path / "runs"), *extra])
        _error_line(r)
        assert not (tmp_path / "runs").exists(), extra


def test_bench_refuses_bad_flags_in_one_line(tmp_path, runner):
    afile = write(tmp_path / "a-file", "x")
    r = runner.invoke(app, ["bench", "--stream-gb", "0.001", "--budget-mb", "0"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    for args in (["--stream-gb", "0.001", "--folder", str(afile)], ["--stream-gb", "-1"],
                 ["--stream-gb", "nan"], ["--stream-gb", "inf"], ["--folder", str(tmp_path)],
                 ["--stream-gb", "1e6", "--folder", str(tmp_path / "new")],
                 ["--stream-gb", "0.001", "--folder", str(afile / "sub")]):  # fmt: skip
        _error_line(runner.invoke(app, ["bench", *args]))
    assert afile.read_text() == "x"


# ----------------------------------------------------------------------------- full disk


def _whole_events(path: Path) -> int:
    """The number of TFRecord events in ``path``; fails unless every one is complete and
    its checksums hold."""
    from huberfit.sinks import _masked_crc32c

    crc, data, at, count = _masked_crc32c(), path.read_bytes(), 0, 0
    while at < len(data):
        header = data[at : at + 8]
        (size,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8 : at + 12])[0] == crc(header), path
        body = data[at + 12 : at + 12 + size]
        assert len(body) == size and len(data) >= at + 16 + size, f"{path}: cut event"
        assert struct.unpack("<I", data[at + 12 + size : at + 16 + size])[0] == crc(body)
        at, count = at + 16 + size, count + 1
    return count


def test_a_failed_event_write_cuts_the_file_back_to_whole_events(tmp_path, monkeypatch):
    """A short write, then ENOSPC: the file is cut back to its whole events, later events
    are dropped (training goes on), and closing it is the one error naming the file."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    from huberfit.sinks import EventFile

    events = EventFile(tmp_path, flush_secs=1000)
    value = Summary(value=[Summary.Value(tag="loss", simple_value=1.0)])
    events.add([value], 1)
    events.flush()
    real, calls = os.write, []

    def half_then_full(fd, data):  # what a filling disk does: a short write, then ENOSPC
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    events.add([value] * 50, 2)
    monkeypatch.setattr(os, "write", half_then_full)
    events.flush()  # fails: recorded, not raised mid-training
    events.add([value] * 50, 3)  # dropped
    events.flush()
    assert len(calls) == 2
    with pytest.raises(RunError, match=f"{events.path.name}: No space left on device"):
        events.close()
    events.close()  # once
    monkeypatch.undo()
    assert _whole_events(events.path) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("limit", "extra"),
    [
        (1_000, []),
        (12_000, []),
        (16_000, ["output.images=false", "train.epochs=10", "train.log_every_steps=1"]),
    ],
)
def test_a_full_disk_ends_a_run_in_one_line_with_only_whole_files(tmp_path, limit, extra):
    """``huberfit train`` under a file-size limit (RLIMIT_FSIZE; SIGXFSZ ignored, so writes
    fail with EFBIG as on a full disk): the limits fail the checkpoint, a picture, the
    events. One ``error:`` line, exit 1, no traceback, and every file left is whole."""
    import resource

    import torch

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run(
        [sys.executable, "-m", "huberfit", "train", "train.epochs=3", "--runs-dir",
         str(tmp_path), "output.flush_secs=1000", *extra],  # the last epochs= wins
        preexec_fn=limited, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HUBERFIT_DEBUG": "0", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert p.returncode == 1, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "File too large" in lines[0] and str(tmp_path) in lines[0]
    if "TensorBoard" in lines[0]:  # the events stopped; the run's own files were written
        (run,) = tmp_path.iterdir()
        assert (run / "checkpoint.pt").is_file() and (run / "metrics.json").is_file()
    for path in tmp_path.rglob("*"):
        if path.is_dir():
            continue
        assert not path.name.startswith("."), f"temporary file left: {path}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            from PIL import Image

            Image.open(path).load()
        elif path.name == "checkpoint.pt":
            torch.load(path, weights_only=True)
        elif path.name.startswith("events.out.tfevents"):
            _whole_events(path)
        else:
            assert path.name == "config.yaml", path


def test_a_full_disk_anywhere_is_one_line(tmp_path, capsys):
    """``config init`` on a full disk: one line naming the file, no file left. And a write
    without its own message (a folder made on a full disk) is still one line."""
    import typer

    from huberfit.cli import user_errors

    @user_errors
    def makes_a_folder() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "val"))

    with pytest.raises(typer.Exit) as stopped:
        makes_a_folder()
    assert stopped.value.exit_code == 1
    assert (
        capsys.readouterr().err
        == f"error: cannot write {tmp_path / 'run' / 'val'}: No space left on device\n"
    )
    import resource

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    p = subprocess.run(
        [sys.executable, "-m", "huberfit", "config", "init", str(tmp_path / "h.yaml")],
        preexec_fn=limited, capture_output=True, text=True, timeout=60,
        env={**os.environ, "HUBERFIT_DEBUG": "0"},
    )  # fmt: skip
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"error: cannot write {tmp_path / 'h.yaml'}: File too large")
    assert list(tmp_path.iterdir()) == []
