"""Deterministic synthetic RAFT stage logs.

The generator writes logs in either layout, shaped like real RAFT runs: the model
improves from stage to stage (log-probs move towards zero), rewards are noisy and
correlated with the response's quality, response lengths are ragged, and rewards
are rounded to two decimals so that ties occur. The same ``seed`` and shape give
byte-identical files on every machine.

Files written (``OUT`` is the output directory):

- nested layout: ``OUT/part-s{stage}-{chunk}.parquet`` with columns ``stage``,
  ``prompt``, ``cand``, ``reward``, ``logprobs`` (list of float32) and, with
  ``payload=True``, ``prompt_text`` and ``response``;
- long layout: ``OUT/tokens/part-...parquet`` with ``stage``, ``prompt``, ``cand``,
  ``token``, ``logprob`` (float32) and ``OUT/rewards/part-...parquet`` with
  ``stage``, ``prompt``, ``cand``, ``reward`` (and the payload columns).

Examples
--------
>>> import tempfile
>>> from raft_polars.synth import generate
>>> with tempfile.TemporaryDirectory() as out:
...     paths = generate(out, layout="nested", stages=2, prompts=3, k=2, seed=1)
...     [p.name for p in paths]
['part-s0000-c0000.parquet', 'part-s0001-c0000.parquet']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from raft_polars._export import write_parquet
from raft_polars.errors import RaftInputError

__all__ = ["Layout", "SynthChunk", "generate", "iter_chunks"]

Layout = Literal["nested", "long"]

_RESPONSE_WORDS = np.array(
    [
        "the",
        "model",
        "answers",
        "carefully",
        "with",
        "a",
        "short",
        "proof",
        "and",
        "an",
        "example",
        "because",
        "reward",
        "ranking",
        "prefers",
        "clear",
        "text",
    ]
)


@dataclass(frozen=True)
class SynthChunk:
    """One chunk of prompts of one stage, as flat numpy arrays (no Python rows)."""

    stage: int
    prompt: np.ndarray  # int32, one per candidate
    cand: np.ndarray  # int32, one per candidate
    reward: np.ndarray  # float64, one per candidate
    lengths: np.ndarray  # int64, tokens per candidate
    logprob: np.ndarray  # float32, all tokens of all candidates, concatenated

    @property
    def offsets(self) -> np.ndarray:
        """Start of each candidate's tokens in ``logprob`` (length ``n + 1``)."""
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def prompts(self, lo: int, hi: int) -> SynthChunk:
        """The candidates of the prompts ``lo <= prompt < hi``."""
        a, b = np.searchsorted(self.prompt, [lo, hi])
        offsets = self.offsets
        return SynthChunk(
            self.stage,
            self.prompt[a:b],
            self.cand[a:b],
            self.reward[a:b],
            self.lengths[a:b],
            self.logprob[offsets[a] : offsets[b]],
        )


def iter_chunks(
    *,
    stages: int,
    prompts: int,
    k: int,
    min_tokens: int = 1,
    max_tokens: int = 64,
    seed: int = 0,
    chunk_prompts: int = 4096,
) -> Iterator[SynthChunk]:
    """Yield the log chunk by chunk, ``chunk_prompts`` prompts of one stage at a
    time, so memory stays bounded for any size.

    The values come from random streams derived from ``(seed, stage, block)``,
    one for each block of :data:`BLOCK_PROMPTS` prompts, whatever the chunks:
    the log does not depend on how much is generated at once.
    """
    _check_shape(
        stages=stages,
        prompts=prompts,
        k=k,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        chunk_prompts=chunk_prompts,
    )
    lengths = (min_tokens, max_tokens)
    for stage in range(stages):
        quality = stage / max(stages - 1, 1)
        blocks = (
            _block(stage, quality, np.arange(start, min(start + BLOCK_PROMPTS, prompts)), k,
                   lengths=lengths, seed=seed)
            for start in range(0, prompts, BLOCK_PROMPTS)
        )  # fmt: skip
        held: list[SynthChunk] = []  # blocks whose prompts are not all yielded yet
        for start in range(0, prompts, chunk_prompts):
            end = min(start + chunk_prompts, prompts)
            while not held or held[-1].prompt[-1] < end - 1:
                held.append(next(blocks))
            yield _joined([block.prompts(start, end) for block in held])
            held = [block for block in held if block.prompt[-1] >= end]


# prompts of one random stream: a chunk of this many (the default) is one block
BLOCK_PROMPTS = 4096


def _block(
    stage: int,
    quality: float,
    prompts: np.ndarray,
    k: int,
    *,
    lengths: tuple[int, int],
    seed: int,
) -> SynthChunk:
    """The ``prompts`` (of one block) of a stage of ``quality`` in [0, 1], from
    the random stream of their block."""
    rng = np.random.default_rng([seed, stage, int(prompts[0]) // BLOCK_PROMPTS])
    # the model gets better: the mean NLL per token falls from ~1.6 to ~0.3
    mean_nll = 1.6 - 1.3 * quality
    n = len(prompts) * k
    prompt = np.repeat(prompts.astype(np.int32), k)
    cand = np.tile(np.arange(k, dtype=np.int32), len(prompts))
    tokens = rng.integers(lengths[0], lengths[1] + 1, size=n, dtype=np.int64)
    # per-response quality shifts the token NLLs; rewards follow quality
    skill = rng.normal(0.0, 0.25, size=n)
    scale = np.repeat(np.clip(mean_nll * (1.0 + skill), 0.05, None), tokens)
    logprob = -rng.exponential(1.0, size=int(tokens.sum())) * scale
    reward = np.round(1.0 * quality - 2.0 * skill + rng.normal(0.0, 0.5, n), 2)
    return SynthChunk(stage, prompt, cand, reward, tokens, logprob.astype(np.float32))


def _joined(parts: list[SynthChunk]) -> SynthChunk:
    """``parts`` of one stage, in prompt order, as one chunk."""
    parts = [part for part in parts if len(part.prompt)]
    if len(parts) == 1:
        return parts[0]
    arrays = ("prompt", "cand", "reward", "lengths", "logprob")
    joined = (np.concatenate([getattr(part, name) for part in parts]) for name in arrays)
    return SynthChunk(parts[0].stage, *joined)


def generate(
    out: str | Path,
    *,
    layout: Layout = "nested",
    stages: int = 4,
    prompts: int = 64,
    k: int = 4,
    min_tokens: int = 1,
    max_tokens: int = 64,
    seed: int = 0,
    payload: bool = False,
    chunk_prompts: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write a deterministic synthetic stage log to the directory ``out``.

    Parameters
    ----------
    out
        Output directory; created if missing.
    layout
        ``"nested"`` (one row per candidate with a list of log-probs) or ``"long"``
        (one row per token, plus a rewards table under ``out/rewards``).
    stages, prompts, k
        Number of stages, prompts per stage and candidates per prompt.
    min_tokens, max_tokens
        Response lengths are uniform in ``[min_tokens, max_tokens]``; both at
        least 1 (a stage whose selected responses are all empty has no loss).
    seed
        Seed of the random streams.
    payload
        Also write ``prompt_text`` and ``response`` text columns.
    chunk_prompts
        Prompts per written file; bounds the generator's memory. The log does
        not depend on it (see :func:`iter_chunks`).
    progress
        Called as ``progress(done, total)`` with token counts after each chunk.

    Returns
    -------
    list of Path
        The files written (for the long layout, the token files then the reward
        files).
    """
    if layout not in ("nested", "long"):
        msg = f"layout must be 'nested' or 'long', got {layout!r}"
        raise RaftInputError(msg)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        msg = f"seed must be a non-negative integer, got {seed!r}"
        raise RaftInputError(msg)
    _check_shape(
        stages=stages,
        prompts=prompts,
        k=k,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        chunk_prompts=chunk_prompts,
    )
    root = Path(out)
    token_dir = root / "tokens" if layout == "long" else root
    reward_dir = root / "rewards"
    token_dir.mkdir(parents=True, exist_ok=True)
    if layout == "long":
        reward_dir.mkdir(parents=True, exist_ok=True)
    total = stages * prompts * k * (min_tokens + max_tokens) // 2
    done = 0
    token_paths: list[Path] = []
    reward_paths: list[Path] = []
    chunk_no: dict[int, int] = {}
    for chunk in iter_chunks(
        stages=stages,
        prompts=prompts,
        k=k,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        seed=seed,
        chunk_prompts=chunk_prompts,
    ):
        c = chunk_no[chunk.stage] = chunk_no.get(chunk.stage, -1) + 1
        name = f"part-s{chunk.stage:04d}-c{c:04d}.parquet"
        candidates = pl.DataFrame(
            {
                "stage": np.full(len(chunk.prompt), chunk.stage, dtype=np.int32),
                "prompt": chunk.prompt,
                "cand": chunk.cand,
                "reward": chunk.reward,
            }
        )
        if payload:
            candidates = candidates.with_columns(_payload(chunk))
        if layout == "nested":
            candidates.insert_column(4, _split(chunk.logprob, chunk.offsets))
            write_parquet(candidates, token_dir / name)
            token_paths.append(token_dir / name)
        else:
            n_tok = len(chunk.logprob)
            starts = np.repeat(chunk.offsets[:-1], chunk.lengths)
            tokens = pl.DataFrame(
                {
                    "stage": np.full(n_tok, chunk.stage, dtype=np.int32),
                    "prompt": np.repeat(chunk.prompt, chunk.lengths),
                    "cand": np.repeat(chunk.cand, chunk.lengths),
                    "token": (np.arange(n_tok, dtype=np.int64) - starts).astype(np.int32),
                    "logprob": chunk.logprob,
                }
            )
            write_parquet(tokens, token_dir / name)
            write_parquet(candidates, reward_dir / name)
            token_paths.append(token_dir / name)
            reward_paths.append(reward_dir / name)
        done += len(chunk.logprob)
        if progress is not None:
            progress(done, max(total, done))
    return token_paths + reward_paths


def _split(values: np.ndarray, offsets: np.ndarray) -> pl.Series:
    """Cut a flat array into a list series at ``offsets`` (no Python row loop)."""
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pl.Series("logprobs", lists)


def _payload(chunk: SynthChunk) -> list[pl.Expr]:
    words = _RESPONSE_WORDS
    first = words[(chunk.prompt.astype(np.int64) * 7 + chunk.cand) % len(words)]
    last = words[(chunk.prompt.astype(np.int64) * 3 + chunk.cand * 5 + chunk.stage) % len(words)]
    return [
        pl.format(
            "Question {}: explain step {} of the proof.", pl.col("prompt"), pl.col("stage")
        ).alias("prompt_text"),
        pl.format(
            "{} {} ({} tokens)",
            pl.lit(pl.Series(first)),
            pl.lit(pl.Series(last)),
            pl.lit(pl.Series(chunk.lengths)),
        ).alias("response"),
    ]


_INT32_MAX = 2**31 - 1  # ids and lengths are written as 32-bit integers


def _check_shape(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:  # an empty response: a stage whose selection is all empty has no loss
            msg = f"{name} must be at least 1, got {value!r}"
            raise RaftInputError(msg)
        if value > _INT32_MAX:
            msg = f"{name} must be at most {_INT32_MAX:,} (32-bit ids and lengths), got {value!r}"
            raise RaftInputError(msg)
    if sizes["max_tokens"] < sizes["min_tokens"]:
        msg = (
            f"max_tokens ({sizes['max_tokens']}) must be at least "
            f"min_tokens ({sizes['min_tokens']})"
        )
        raise RaftInputError(msg)
