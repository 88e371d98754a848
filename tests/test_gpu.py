"""The CUDA path: no host synchronisation within an epoch, and the same training as on the
CPU. Skipped without a GPU (``torch.cuda.is_available()``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from huberfit.data.batches import InMemoryBatches, StreamBatches
from huberfit.loop import FitSettings, fit
from huberfit.losses import build_loss
from huberfit.model import build_model
from huberfit.optim import SGD, Adam

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Steps:
    def __init__(self) -> None:
        self.logged: list[tuple[int, float]] = []

    def step(self, step: int, loss: float) -> None:
        self.logged.append((step, loss))

    def epoch(self, report) -> None: ...


class SyncFree:
    """A batch source whose epochs run under ``set_sync_debug_mode("error")``: from the
    first batch taken to the last, any host synchronisation raises."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def epoch(self, epoch: int, skip: int = 0):
        items = self.inner.epoch(epoch, skip)
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from items
        finally:
            torch.cuda.set_sync_debug_mode("default")
            items.close()


def _data(n: int = 5000, f: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, f, generator=g)
    y = X @ torch.randn(f, 1, generator=g) + 0.3 * torch.randn(n, 1, generator=g)
    return X, y


def _fit(source, features: int, device: str, optimizer: str, loss: str, log_every: int = 1,
         zero_grad: bool = True):  # fmt: skip
    model = build_model(features, True, 0, torch.float32).to(device)
    params = list(model.parameters())
    opt = SGD(params, lr=0.05, momentum=0.9) if optimizer == "sgd" else Adam(params, lr=0.01)
    sink = Steps()
    settings = FitSettings(epochs=3, log_every_steps=log_every, zero_grad=zero_grad)
    result = fit(model, build_loss(loss, 1.0), source, opt, sink, settings,
                 lambda m: (None, {}, None))  # fmt: skip
    return result, sink, torch.cat([model.weight.reshape(-1), model.bias]).detach().cpu()


@pytest.mark.parametrize("optimizer, loss, zero_grad",
                         [("sgd", "huber", True), ("adam", "mse", True), ("sgd", "l1", False)])  # fmt: skip
def test_an_epoch_on_cuda_never_waits_for_the_host(optimizer, loss, zero_grad):
    X, y = _data()
    strict = SyncFree(InMemoryBatches(X.cuda(), y.cuda(), 64, seed=3))
    result, sink, params = _fit(strict, 6, "cuda", optimizer, loss, zero_grad=zero_grad)
    assert result.status == "completed" and math.isfinite(result.last.train_loss)
    # the same training on the CPU: same batches, same updates, float32 rounding apart
    cpu_result, cpu_sink, cpu_params = _fit(InMemoryBatches(X, y, 64, seed=3), 6, "cpu",
                                            optimizer, loss, zero_grad=zero_grad)  # fmt: skip
    assert [s for s, _ in sink.logged] == [s for s, _ in cpu_sink.logged]  # every step logged
    np.testing.assert_allclose(params.numpy(), cpu_params.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(result.last.train_loss, cpu_result.last.train_loss, rtol=1e-3)


def test_a_streamed_epoch_on_cuda_never_waits_for_the_host(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from huberfit.data.stream import scan

    X, y = _data(3000, 4)
    cols = {f"x{i}": X[:, i].double().numpy() for i in range(4)} | {"y": y[:, 0].double().numpy()}
    pq.write_table(pa.table(cols), tmp_path / "d.parquet", row_group_size=500)
    info = scan(str(tmp_path / "d.parquet"), "parquet", "y", None, 0, 0.2, True, True)
    source = StreamBatches(info, "train", 128, torch.device("cuda"), torch.float32, 1000)
    result, _, _ = _fit(SyncFree(source), 4, "cuda", "sgd", "huber", log_every=5)
    assert result.status == "completed" and math.isfinite(result.last.train_loss)


def test_a_diverging_run_on_cuda_names_its_log_step():
    X, y = _data()
    source = InMemoryBatches(X.cuda(), (y * 1e3).cuda(), 64, seed=3)
    model = build_model(6, True, 0, torch.float32).cuda()
    opt = SGD(list(model.parameters()), lr=50.0)
    result = fit(model, build_loss("mse"), SyncFree(source), opt, Steps(),
                 FitSettings(epochs=2, log_every_steps=5), lambda m: (None, {}, None))  # fmt: skip
    assert result.status == "diverged"
    assert "epoch 1, step" in result.message and "try a smaller optimizer.lr" in result.message


def test_bench_on_cuda_prints_the_same_table_with_the_gpu_named(runner):
    from huberfit.cli import app

    r = runner.invoke(app, ["bench", "--device", "cuda", "--rows", "20000", "--features", "4",
                            "--epochs", "1", "--batch-size", "4096", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    import json

    data = json.loads(r.stdout)
    assert data["device"].startswith("cuda") and data["machine"]["gpu"]
    assert data["machine"]["gpu"] in data["host"]
    assert {row["what"] for row in data["table"]} >= {"(b) huberfit engine", "(b') bare update"}
