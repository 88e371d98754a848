"""Shared fixtures: small configs and a CLI runner; every test writes into tmp_path."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

os.environ.setdefault("HUBERFIT_DEBUG", "0")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path
