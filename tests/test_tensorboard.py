"""TensorBoard output read back with TensorBoard's own reader, and served by a real
``tensorboard`` process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from huberfit.config import load_config
from huberfit.experiment import train_run
from huberfit.sinks import ConsoleSink


def train(tmp_path, *overrides):
    cfg = load_config(None, ["train.epochs=3", "data.n_samples=400", *overrides])
    return train_run(cfg, ConsoleSink(1, quiet=True), runs_dir=str(tmp_path))


def accumulate(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def test_scalars_steps_and_final_val_loss(tmp_path):
    out = train(tmp_path, "data.n_features=1")
    ea = accumulate(out.run_dir)
    tags = set(ea.Tags()["scalars"])
    expected = {"loss/train", "loss/train_epoch", "loss/val", "metrics/val_mse", "metrics/val_mae",
                "metrics/val_r2", "optim/lr", "optim/grad_norm", "params/x0", "params/intercept",
                "params/x0_true", "params/intercept_true", "perf/samples_per_second",
                "metrics/coefficient_error"}  # fmt: skip
    assert expected <= tags
    steps_per_epoch = -(-out.metrics["n_train"] // 64)  # batch 64, last one partial
    assert [e.step for e in ea.Scalars("loss/val")] == [steps_per_epoch * k for k in (1, 2, 3)]
    # loss/train every 10 steps, clamped to the steps of an epoch (fewer than 10 here)
    assert steps_per_epoch < 10
    assert [e.step for e in ea.Scalars("loss/train")] == [steps_per_epoch * k for k in (1, 2, 3)]
    last = ea.Scalars("loss/val")[-1].value
    assert last == pytest.approx(out.metrics["val"]["loss"], rel=1e-6)
    assert ea.Scalars("params/x0_true")[0].value == pytest.approx(
        out.metrics["true_coefficients"]["x0"]
    )
    assert {"images/fit", "images/residuals"} <= set(ea.Tags()["images"])
    assert "residuals/val" in ea.Tags()["histograms"]
    assert {"config/text_summary", "summary/text_summary"} <= set(ea.Tags()["tensors"])
    assert (out.run_dir / "fit.png").stat().st_size > 1000
    assert (out.run_dir / "residuals.png").stat().st_size > 1000


def test_hparams_in_the_run_folder_with_the_same_keys_for_every_loss(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    keys = []
    for loss in ("huber", "mse", "l1"):
        out = train(tmp_path, f"loss.name={loss}")
        assert [p for p in out.run_dir.iterdir() if p.is_dir()] == []  # no timestamped subfolder
        content = accumulate(out.run_dir).PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        )
        keys.append(set(start.session_start_info.hparams))
        exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        metric_tags = {m.name.tag for m in exp.experiment.metric_infos}
        assert {"loss/val", "metrics/val_mse", "metrics/val_mae", "metrics/val_r2"} <= metric_tags
    assert keys[0] == keys[1] == keys[2]
    assert {"loss", "delta", "optimizer", "lr", "batch_size", "grad_accum_steps", "epochs",
            "seed", "dtype", "data_source", "n_samples", "outlier_fraction"} <= keys[0]  # fmt: skip


def test_tensorboard_off_writes_no_events(tmp_path):
    out = train(tmp_path, "output.tensorboard=false")
    assert not list(out.run_dir.glob("events.out.tfevents.*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_a_real_tensorboard_server_serves_each_run(tmp_path):
    runs = tmp_path / "runs"
    a = train(runs, "name=alpha", "data.n_features=1")
    b = train(runs, "name=beta", "loss.name=mse")
    port = _free_port()
    exe = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(exe), "--logdir", str(runs), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        runs_served = []
        while time.time() < deadline:
            try:
                runs_served = _get(f"{base}/data/runs")
                if len(runs_served) >= 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert sorted(runs_served) == sorted([a.run_dir.name, b.run_dir.name])
        scalars = _get(f"{base}/data/plugin/scalars/tags")
        for run in (a, b):
            assert {"loss/train", "loss/val", "metrics/val_mae"} <= set(scalars[run.run_dir.name])
        images = _get(f"{base}/data/plugin/images/tags")
        assert "images/fit" in images[a.run_dir.name]
        hp = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in hp["hparamInfos"]}
        assert {"loss", "delta", "lr"} <= names
        groups = _get(
            f"{base}/data/plugin/hparams/session_groups",
            {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN"],
             "colParams": [], "startIndex": 0, "sliceSize": 100},
        )  # fmt: skip
        assert groups["totalSize"] == 2
    finally:
        server.terminate()
        server.wait(timeout=20)
