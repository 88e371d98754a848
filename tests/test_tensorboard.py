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

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from huberfit.config import load_config
from huberfit.experiment import train_run
from huberfit.sinks import ConsoleSink, histogram_proto


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
    expected = {"loss/train", "loss/epoch", "val/loss", "val/mse", "val/mae", "val/r2",
                "train/lr", "train/grad_norm", "train/samples_per_second", "params/x0",
                "params/intercept", "params/coefficient_error"}  # fmt: skip
    assert expected <= tags
    steps_per_epoch = -(-out.metrics["n_train"] // 64)  # batch 64, last one partial
    assert [e.step for e in ea.Scalars("val/loss")] == [steps_per_epoch * k for k in (1, 2, 3)]
    # loss/train every 10 steps, clamped to the steps of an epoch (fewer than 10 here)
    assert steps_per_epoch < 10
    assert [e.step for e in ea.Scalars("loss/train")] == [steps_per_epoch * k for k in (1, 2, 3)]
    last = ea.Scalars("val/loss")[-1].value
    assert last == pytest.approx(out.metrics["val"]["loss"], rel=1e-6)
    assert ea.Scalars("params/coefficient_error")[-1].value == pytest.approx(
        out.metrics["coefficient_error"], rel=1e-5
    )
    assert {"pictures/fit", "pictures/residuals"} <= set(ea.Tags()["images"])
    assert "residuals/val" in ea.Tags()["histograms"]
    assert {"config/text_summary", "summary/text_summary"} <= set(ea.Tags()["tensors"])
    assert (out.run_dir / "fit.png").stat().st_size > 1000
    assert (out.run_dir / "residuals.png").stat().st_size > 1000


def test_validation_and_truth_share_charts_with_the_run(tmp_path):
    """Sibling runs put the validation loss in the train loss's chart (``loss/epoch``) and
    the true coefficients in the fitted ones' (``params/<name>``), from start to end."""
    out = train(tmp_path, "data.n_features=1")
    val, truth, main = (accumulate(out.run_dir / sub) for sub in ("val", "truth", ""))
    assert val.Tags()["scalars"] == ["loss/epoch"]
    assert [e.value for e in val.Scalars("loss/epoch")] == [
        e.value for e in main.Scalars("val/loss")
    ]
    assert set(truth.Tags()["scalars"]) == {"params/x0", "params/intercept"}
    x0 = truth.Scalars("params/x0")
    assert [e.step for e in x0] == [0, out.metrics["steps"]]
    assert x0[0].value == pytest.approx(out.metrics["true_coefficients"]["x0"])
    # and the CUSTOM SCALARS tab draws the same pairs
    from tensorboard.plugins.custom_scalar import layout_pb2

    event = main.Tensors("custom_scalars__config__")[0]  # the layout is the tensor's string
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["train and validation loss"] == ["^loss/epoch$"]
    assert charts["x0"] == ["^params/x0$"] and charts["intercept"] == ["^params/intercept$"]


def test_hparams_in_the_run_folder_with_the_same_keys_for_every_loss(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    keys = []
    for loss in ("huber", "mse", "l1", "quantile"):
        out = train(tmp_path, f"loss.name={loss}")
        # no timestamped subfolder: only the validation and truth side runs
        assert {p.name for p in out.run_dir.iterdir() if p.is_dir()} == {"val", "truth"}
        content = accumulate(out.run_dir).PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        )
        keys.append(set(start.session_start_info.hparams))
        exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        metric_tags = [m.name.tag for m in exp.experiment.metric_infos]
        # every final metric, the most telling first (TensorBoard ticks the first five)
        assert metric_tags == ["val/loss", "params/coefficient_error", "val/mae", "val/mse",
                               "loss/epoch", "loss/gap", "val/r2"]  # fmt: skip
        # TensorBoard ticks the five hparams it sorts first: (not differs, name)
        infos = sorted(exp.experiment.hparam_infos, key=lambda h: (not h.differs, h.name))
        assert {h.name for h in infos[:5]} == {"loss", "delta", "optimizer", "lr", "batch_size"}
    assert keys[0] == keys[1] == keys[2] == keys[3]
    assert {"loss", "delta", "quantile", "optimizer", "lr", "batch_size", "grad_accum_steps", "epochs",
            "seed", "dtype", "data_source", "n_samples", "outlier_fraction"} <= keys[0]  # fmt: skip


def test_tensorboard_off_writes_no_events(tmp_path):
    out = train(tmp_path, "output.tensorboard=false")
    assert (out.run_dir / "metrics.json").is_file()  # the run was written, events aside
    assert not list(out.run_dir.rglob("events.out.tfevents.*"))
    assert not [p for p in out.run_dir.iterdir() if p.is_dir()]  # no val/ or truth/ side runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
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
                if len(runs_served) >= 6:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        names = [r.run_dir.name for r in (a, b)]
        assert sorted(runs_served) == sorted(
            f"{n}{side}" for n in names for side in ("", "/val", "/truth")
        )
        scalars = _get(f"{base}/data/plugin/scalars/tags")
        for name in names:
            assert {"loss/train", "loss/epoch", "val/loss", "val/mae"} <= set(scalars[name])
            assert set(scalars[f"{name}/val"]) == {"loss/epoch"}
        images = _get(f"{base}/data/plugin/images/tags")
        assert "pictures/fit" in images[a.run_dir.name]
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


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).standard_normal(10_000).astype(np.float32),
        np.random.default_rng(1).standard_normal(7),
        np.array([3.0] * 5),  # one value: NumPy's range of +-0.5
        np.linspace(-1.0, 1.0, 65),  # values on the bin edges
        np.concatenate([np.random.default_rng(2).standard_normal(100), [50.0]]),  # empty bins
        np.random.default_rng(3).integers(0, 5, 1000).astype(float),  # ties
    ],
)
def test_the_residual_histogram_is_the_one_torch_builds(values):
    from torch.utils.tensorboard import summary

    assert histogram_proto(values, 64) == summary.histogram("r", values, 64).value[0].histo


def test_the_residual_histogram_leaves_out_values_that_are_not_finite():
    from torch.utils.tensorboard import summary

    finite = np.array([0.5, -1.0, 2.0, 3.5])
    with_bad = np.concatenate([finite, [np.nan, np.inf, -np.inf]])
    assert histogram_proto(with_bad, 64) == summary.histogram("r", finite, 64).value[0].histo
    assert histogram_proto(np.array([np.nan]), 64) is None


def test_events_kept_back_keep_their_steps_times_and_histograms(tmp_path):
    """Events are made in batches (up to 16 epochs, or when a flush is due): each keeps
    the step and wall time of its epoch, and each epoch's histogram is of its residuals."""
    from huberfit.loop import EpochReport
    from huberfit.sinks import TensorBoardSink

    rng = np.random.default_rng(0)
    residuals, spans = [], []
    with TensorBoardSink(tmp_path, flush_secs=1000) as sink:
        for epoch in range(1, 21):  # more than one batch: 16, then 4 at close
            for step in range(10 * epoch - 9, 10 * epoch + 1):
                sink.step(step, 1.0 / step)
            residuals.append(rng.standard_normal(30_000) * epoch)
            report = EpochReport(epoch=epoch, step=10 * epoch, train_loss=1.0 / epoch,
                                 val={"loss": 2.0 / epoch, "mse": 1.0, "mae": 1.0, "r2": 0.5},
                                 params={"x0": float(epoch)}, lr=0.1, grad_norm=1.0,
                                 samples_per_second=1e6, seconds=0.1,
                                 residuals=residuals[-1])  # fmt: skip
            before = time.time()
            sink.epoch(report)
            spans.append((before, time.time()))
    ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("loss/train")] == list(range(1, 201))
    assert [e.value for e in ea.Scalars("loss/train")] == pytest.approx(
        [1.0 / s for s in range(1, 201)])  # fmt: skip
    epochs = ea.Scalars("params/x0")
    assert [(e.step, e.value) for e in epochs] == [(10 * k, k) for k in range(1, 21)]
    for event, (before, after) in zip(epochs, spans, strict=True):
        assert before <= event.wall_time <= after
    histograms = ea.Histograms("residuals/val")
    assert [h.step for h in histograms] == [10 * k for k in range(1, 21)]
    for h, r in zip(histograms, residuals, strict=True):  # a strided sample of 10,000
        assert h.histogram_value.num == 10_000
        assert h.histogram_value.max == r[::3].max()
    val = EventAccumulator(str(tmp_path / "val"))
    val.Reload()
    assert [e.step for e in val.Scalars("loss/epoch")] == [10 * k for k in range(1, 21)]
    assert [e.value for e in val.Scalars("loss/epoch")] == pytest.approx(
        [2.0 / k for k in range(1, 21)])  # fmt: skip


def test_a_resumed_run_does_not_start_its_truth_line_again(tmp_path):
    """The true coefficients' side run starts at step 0 once: a resumed run's sink only
    continues it (its line went 0, 33140, 0, 46950 before)."""
    from huberfit.sinks import TensorBoardSink

    for _ in range(2):  # the run, then its resumption
        TensorBoardSink(tmp_path, flush_secs=5, truth={"x0": 2.0}).close()
    ea = EventAccumulator(str(tmp_path / "truth"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("params/x0")] == [0]
