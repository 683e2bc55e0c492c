"""How the batch is selected and reduced: the options every entry point takes.

:class:`Selection` is the ranking (``strategy``, ``n``, ``fraction``,
``min_reward``), checked once when it is built; :data:`Reduction` is how the
selected tokens become a loss. The Python API and the CLI both build them; the
exact meaning of each option is in ``docs/semantics.md``.

Examples
--------
>>> from raft_polars import Selection
>>> Selection(strategy="top_n", n=2).is_best_of_k
False
>>> Selection(strategy="global", fraction=1.5)
Traceback (most recent call last):
...
raft_polars.errors.RaftInputError: strategy='global' needs 0 < fraction <= 1, got 1.5
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, TypeAlias

import numpy as np

from raft_polars.errors import RaftInputError

__all__ = ["BadRewards", "Reduction", "Selection", "Strategy", "check_reduction"]

Strategy: TypeAlias = Literal["best", "top_n", "global"]
Reduction: TypeAlias = Literal["token", "sequence"]
BadRewards: TypeAlias = Literal["error", "skip"]


def is_number(value: object) -> bool:
    """A real number an option takes (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value: object) -> bool:
    """An integer an option takes (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True)
class Selection:
    """How the batch is selected from the ranked candidates.

    Parameters
    ----------
    strategy
        ``"best"`` (best-of-K, the default), ``"top_n"`` or ``"global"``.
    n
        Candidates kept per prompt with ``"top_n"``.
    fraction
        Share of a stage's candidates kept with ``"global"``, in ``(0, 1]``,
        taken as written (a float by its shortest decimal, a ``Decimal`` or a
        ``Fraction`` exactly; see ``docs/semantics.md``).
    min_reward
        Drop selected candidates whose reward is below this (a numpy float or a
        ``Decimal`` as written: ``np.float32(0.2)`` is 0.2).
    bad_rewards
        ``"error"`` (default): a null, NaN or infinite reward is an input error;
        ``"skip"``: such a candidate is left out of the ranking and the
        statistics, counted per stage in ``skipped`` (and a prompt left with no
        candidate in ``skipped_prompts``).
    """

    strategy: Strategy = "best"
    n: int = 1
    fraction: float | None = None
    min_reward: float | None = None
    bad_rewards: BadRewards = "error"

    def __post_init__(self) -> None:
        if self.strategy not in ("best", "top_n", "global"):
            msg = f"strategy must be 'best', 'top_n' or 'global', got {self.strategy!r}"
            raise RaftInputError(msg)
        for name in ("fraction", "min_reward"):
            value = getattr(self, name)
            exact = isinstance(value, Decimal) and value.is_finite()  # a fraction's: as given
            if name == "min_reward" and exact:
                value = float(value)
            elif name == "min_reward" and isinstance(value, np.floating):
                value = float(str(value))  # as written: np.float32(0.2) is 0.2
            object.__setattr__(self, name, value)
            if value is not None and not (is_number(value) or exact):
                msg = f"{name} must be a number, got {value!r}"
                raise RaftInputError(msg)
        if not is_whole(self.n) or self.n < 1:
            msg = f"n must be a whole number >= 1, got {self.n!r}"
            raise RaftInputError(msg)
        object.__setattr__(self, "n", int(self.n))  # numpy's integers as Python's
        if self.strategy == "global":
            if self.fraction is None or not 0.0 < self.fraction <= 1.0:
                msg = f"strategy='global' needs 0 < fraction <= 1, got {self.fraction!r}"
                raise RaftInputError(msg)
        elif self.fraction is not None:
            msg = f"fraction applies to strategy='global' only, not {self.strategy!r}"
            raise RaftInputError(msg)
        if self.strategy != "top_n" and self.n != 1:
            msg = f"n applies to strategy='top_n' only, not {self.strategy!r}"
            raise RaftInputError(msg)
        if self.bad_rewards not in ("error", "skip"):
            msg = f"bad_rewards must be 'error' or 'skip', got {self.bad_rewards!r}"
            raise RaftInputError(msg)
        if self.min_reward is not None and not _finite(self.min_reward):
            msg = f"min_reward must be a finite number, got {self.min_reward!r}"
            raise RaftInputError(msg)

    @property
    def is_best_of_k(self) -> bool:
        """Plain best-of-K with no threshold: one selected candidate per prompt."""
        return self.strategy == "best" or (self.strategy == "top_n" and self.n == 1)

    @property
    def group(self) -> tuple[str, ...]:
        """The ids that a ranking needs whole: a prompt's candidates, or (global
        ranking) a stage's."""
        return ("stage",) if self.strategy == "global" else ("stage", "prompt")


def check_reduction(reduction: object) -> None:
    """Raise :class:`RaftInputError` unless ``reduction`` is ``"token"`` or ``"sequence"``."""
    if reduction not in ("token", "sequence"):
        msg = f"reduction must be 'token' or 'sequence', got {reduction!r}"
        raise RaftInputError(msg)
