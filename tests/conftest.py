"""Shared fixtures of the test suite (kept small: helpers live in plain modules,
``tests/reference.py`` and ``tests/strategies.py``)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from reference import SEED_LOG_PROBS, SEED_REWARDS
from strategies import LogProbs, Rewards

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    """``tests/data``: tiny golden files, good and broken (see its README)."""
    return DATA_DIR


@pytest.fixture
def seed_log() -> tuple[LogProbs, Rewards]:
    """``(stages_log_probs, stages_rewards)`` of the task statement's example."""
    return copy.deepcopy(SEED_LOG_PROBS), copy.deepcopy(SEED_REWARDS)
