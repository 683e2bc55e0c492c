"""Shared fixtures of the test suite (kept small: helpers live in plain modules,
``tests/reference.py`` and ``tests/strategies.py``)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"

# the example of the task statement (seed/raft_task.txt): [1.55, 0.55, 0.15]
SEED_LOG_PROBS = [
    [[[-2.0, -1.8], [-1.5, -1.6]]],
    [[[-0.6, -0.5], [-0.7, -0.8]]],
    [[[-0.2, -0.1], [-0.3, -0.4]]],
]
SEED_REWARDS = [[[0.2, 0.4]], [[0.75, 0.7]], [[0.95, 0.8]]]


@pytest.fixture
def data_dir() -> Path:
    """``tests/data``: tiny golden files, good and broken (see its README)."""
    return DATA_DIR


@pytest.fixture
def seed_log() -> tuple[list, list]:
    """``(stages_log_probs, stages_rewards)`` of the task statement's example."""
    return copy.deepcopy(SEED_LOG_PROBS), copy.deepcopy(SEED_REWARDS)
