"""Your own loss module: trained like a built-in, each classic mistake caught before
anything is written, and a changed file refused on resume."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from huberfit.cli import app

WHERE = (
    "import torch\nfrom torch import nn\n\n"
    "class Loss(nn.Module):\n"
    "    def __init__(self, delta=1.0):\n        super().__init__()\n        self.delta = delta\n\n"
    "    def forward(self, y_pred, y_true):\n"
    "        r = y_true - y_pred\n"
    "        {body}\n"
)
GOOD = "return torch.where(r.abs() <= self.delta, 0.5 * r**2, self.delta * (r.abs() - 0.5 * self.delta)).mean()"
MISTAKES = {
    "wrong branch": ("return (0.5 * r**2 - r.abs() * 3).mean() - r.abs().mean() * r.abs().mean()",
                     "falls as the fit gets worse"),
    "per row": ("return torch.where(r.abs() <= 1, 0.5 * r**2, r.abs() - 0.5)",
                "returned shape (64, 1), not a scalar: return loss.mean()"),
    "nan": ("return (r * float('nan')).mean()", "returned nan on ordinary residuals"),
    "item": ("return (0.5 * r**2).mean().item()", "returned float, not a tensor"),
    "cut off": ("return torch.tensor(float((0.5 * r**2).mean()))", "cut off the autograd graph"),
    "dtype": ("out = torch.zeros(r.shape); out[:] = 0.5 * r**2; return out.mean()",
              "make tensors inside forward from the inputs"),
}  # fmt: skip


def _file(tmp_path, name: str, body: str):
    path = tmp_path / f"{name}.py"
    path.write_text(WHERE.replace("{body}", body))
    return path


def _train(runner, tmp_path, *args):
    return runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), "--json",
                               "output.images=false", *args])  # fmt: skip


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_classic_mistake_is_one_line_naming_its_fix(tmp_path, runner, mistake):
    body, expected = MISTAKES[mistake]
    path = _file(tmp_path, "mine", body)
    r = _train(runner, tmp_path, f"loss.name={path}:Loss", "dtype=float64")
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: Loss (float") and expected in lines[-1], lines
    assert "Traceback" not in r.output
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_missing_file_class_and_bad_kwargs(tmp_path, runner):
    path = _file(tmp_path, "mine", GOOD)
    for args, expected in [
        ([f"loss.name={tmp_path / 'nope.py'}:Loss"], "file not found"),
        ([f"loss.name={path}:Lost"], "has no class 'Lost'; it has Loss"),
        ([f"loss.name={path}:Loss", "loss.kwargs={epsilon: 2}"], "Loss(**{'epsilon': 2}) failed"),
        (["loss.name=huber", "loss.kwargs={delta: 2}"], "loss.kwargs is for your own loss"),
    ]:
        r = _train(runner, tmp_path, *args)
        assert r.exit_code == 1 and expected in r.stderr, (args, r.output)


@pytest.mark.slow
def test_a_correct_own_huber_trains_to_the_built_in_optimum_and_resumes(tmp_path, runner):
    path = _file(tmp_path, "mine", GOOD)
    exact = ["dtype=float64", "optimizer.name=lbfgs", "train.epochs=30"]
    own = _train(runner, tmp_path, f"loss.name={path}:Loss", *exact)
    built = _train(runner, tmp_path, "loss.name=huber", *exact)
    assert own.exit_code == 0 and built.exit_code == 0, own.output + built.output
    a, b = json.loads(own.stdout), json.loads(built.stdout)
    assert a["loss"] == "Loss" and a["loss_source"]["sha256"] and a["optimum"] is None
    coef = lambda m: np.r_[list(m["coefficients"].values()), m["intercept"]]  # noqa: E731
    # both end with Newton steps on the same quadratic piece: the same float64 point
    np.testing.assert_allclose(coef(a), coef(b), rtol=1e-10, atol=1e-12)
    assert "Newton steps with autograd's Hessian" in a["message"]
    # resume: the same file continues; a changed file is refused, nothing rewritten
    r = runner.invoke(app, ["train", "--resume", a["run_dir"], "train.epochs=31", "--json"])
    assert r.exit_code == 0, r.output
    path.write_text(path.read_text() + "\n# changed\n")
    before = (tmp_path / "runs").stat().st_mtime
    r = runner.invoke(app, ["train", "--resume", a["run_dir"], "train.epochs=32"])
    assert r.exit_code == 1 and "has changed since this run was trained" in r.stderr
    assert (tmp_path / "runs").stat().st_mtime == before


def test_the_shipped_lesson_loss_trains(tmp_path, runner):
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "configs" / "lessons" / "where_huber.yaml"
    r = runner.invoke(app, ["train", "--config", str(cfg), "--runs-dir", str(tmp_path),
                            "--json", "train.epochs=2", "output.images=false"])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["loss"] == "WhereHuber" and m["status"] == "completed"
    assert textwrap.dedent(m["optimum_note"]).startswith("your own loss")


LESSONS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "lessons"


@pytest.mark.parametrize(("cls", "passes"), [("where_huber.py:WhereHuber", True),
                                             ("mask_huber.py:MaskHuber", True),
                                             ("mask_huber.py:MaskHuberBug", False)])  # fmt: skip
def test_check_loss_passes_the_lessons_and_catches_the_wrong_mask(runner, cls, passes):
    r = runner.invoke(app, ["check-loss", str(LESSONS / cls), "--reference", "huber",
                            "--rows", "20000", "--json"])  # fmt: skip
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    assert (r.exit_code == 0) == passes, r.output
    value = checks["value against huber (delta 1)"]
    assert value["passed"] == passes
    if not passes:
        assert "expected" in value["detail"] and "got" in value["detail"]
        assert "checks failed" in r.stderr
    for name in ("returns a scalar on (64, 1) inputs", "gradcheck in float64 (autograd's own test)",
                 "follows the inputs' dtype and device"):  # fmt: skip
        assert checks[name]["passed"], checks[name]


def test_check_loss_reports_a_classic_mistake_as_a_failed_check(tmp_path, runner):
    path = _file(tmp_path, "mine", MISTAKES["per row"][0])
    r = runner.invoke(app, ["check-loss", f"{path}:Loss", "--json"])
    assert r.exit_code == 1
    first = json.loads(r.stdout)[0]
    assert not first["passed"] and "return loss.mean()" in first["detail"]
    r = runner.invoke(app, ["check-loss", "nocolon"])
    assert r.exit_code == 1 and "file.py:Class" in r.stderr


def test_eval_scores_your_loss_only_when_you_hand_it_over(tmp_path, runner):
    import pandas as pd

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    pd.DataFrame(X, columns=["a", "b"]).assign(t=X @ [1.0, 2.0] + rng.normal(size=200)).to_csv(
        tmp_path / "d.csv", index=False
    )
    path = _file(tmp_path, "mine", GOOD)
    r = _train(runner, tmp_path, f"loss.name={path}:Loss", "data.source=csv",
               f"data.path={tmp_path / 'd.csv'}", "data.target=t", "train.epochs=2")  # fmt: skip
    run = json.loads(r.stdout)["run_dir"]
    r = runner.invoke(app, ["eval", "--run", run, "--input", str(tmp_path / "d.csv"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["objective"] is None
    r = runner.invoke(app, ["eval", "--run", run, "--input", str(tmp_path / "d.csv"), "--json",
                            "--loss", f"{path}:Loss"])  # fmt: skip
    scores = json.loads(r.stdout)
    assert r.exit_code == 0 and scores["objective"] > 0 and scores["loss"] == "Loss"
    r = runner.invoke(app, ["eval", "--run", run, "--input", str(tmp_path / "d.csv"),
                            "--loss", f"{path}:Other"])  # fmt: skip
    assert r.exit_code == 1 and "this run trained Loss, not Other" in r.stderr


def test_check_loss_catches_a_sum_and_a_bad_option(tmp_path, runner):
    path = _file(tmp_path, "mine", GOOD.replace(").mean()", ").sum()"))
    r = runner.invoke(app, ["check-loss", f"{path}:Loss", "--reference", "huber", "--rows",
                            "2000", "--json"])  # fmt: skip
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    assert r.exit_code == 1 and not checks["the mean over a batch, not the sum"]["passed"]
    assert (
        "return loss.mean(), not .sum()" in checks["the mean over a batch, not the sum"]["detail"]
    )
    for bad, expected in ((["--delta", "0"], "--delta must be"), (["--device", "tpu"], "tpu")):
        r = runner.invoke(app, ["check-loss", f"{path}:Loss", *bad])
        assert r.exit_code == 1 and expected in r.stderr and "Traceback" not in r.output


def test_compare_with_a_broken_own_loss_writes_nothing(tmp_path, runner):
    path = _file(tmp_path, "mine", MISTAKES["per row"][0])
    r = runner.invoke(app, ["compare-losses", "--runs-dir", str(tmp_path / "runs"),
                            "--losses", f"huber,{path}:Loss"])  # fmt: skip
    assert r.exit_code == 1 and "not a scalar" in r.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_compare_gives_your_loss_its_kwargs_and_the_built_ins_none(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _file(tmp_path, "mine", GOOD)  # relative on the command line, from the current folder
    r = runner.invoke(app, ["compare-losses", "--runs-dir", "runs", "--losses", "huber,mine.py:Loss",
                            "--deltas", "2", "loss.name=mine.py:Loss", "loss.kwargs={delta: 2.0}",
                            "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = {row["label"]: row for row in json.loads(r.stdout)["runs"]}
    assert set(rows) == {"huber-d2", "Loss"}
    # the same loss (Huber, delta 2) from the same start: the same coefficients
    np.testing.assert_allclose(list(rows["Loss"]["coefficients"].values()),
                               list(rows["huber-d2"]["coefficients"].values()), rtol=1e-5)  # fmt: skip
    assert "no exact reference" in json.loads(r.stdout)["verdict"]
