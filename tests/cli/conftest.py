"""Fixtures of the CLI tests: small ragged logs written in both layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import LogFiles, make_log


@pytest.fixture(scope="session")
def log_files(tmp_path_factory: pytest.TempPathFactory) -> LogFiles:
    """Integer ids (stages 5, 15, ...; prompts 100, 103, ...), both layouts."""
    return make_log(11).write(tmp_path_factory.mktemp("log"))


@pytest.fixture(scope="session")
def string_log_files(tmp_path_factory: pytest.TempPathFactory) -> LogFiles:
    """String prompt ids, both layouts."""
    return make_log(23, string_ids=True).write(tmp_path_factory.mktemp("slog"))


@pytest.fixture(params=["int", "str"])
def any_log_files(request: pytest.FixtureRequest, log_files: LogFiles,
                  string_log_files: LogFiles) -> LogFiles:
    """Each of the logs above in turn: integer, then string prompt ids."""
    return log_files if request.param == "int" else string_log_files


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty directory for outputs."""
    path = tmp_path / "out"
    path.mkdir()
    return path
