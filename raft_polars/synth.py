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

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from raft_polars._export import clean_stale, write_atomically, write_into, write_parquet
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

    @cached_property
    def offsets(self) -> np.ndarray:
        """Start of each candidate's tokens in ``logprob`` (length ``n + 1``),
        computed once per chunk."""
        return _offsets(self.lengths)

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


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


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
    time.

    The values come from random streams derived from ``(seed, stage, block)``,
    one for each block of :data:`BLOCK_PROMPTS` prompts, whatever the chunks:
    the log does not depend on how much is generated at once.

    Memory: a chunk's log-probs are drawn on their own, in steps of at most
    :data:`PIECE_TOKENS` tokens, so the generator holds the chunk (its
    ``logprob`` takes 4 bytes a token), the per-candidate values (lengths,
    rewards: a few tens of bytes a candidate) of the blocks the chunk touches
    (at most ``BLOCK_PROMPTS * k`` candidates each) and two buffers of
    ``PIECE_TOKENS`` float64 values, not a block's tokens. A block with a
    chunk boundary inside it (``chunk_prompts`` not a multiple of
    ``BLOCK_PROMPTS``) draws its log-prob stream twice, once to reach the
    rewards drawn after it.
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
            _Block(stage, quality, start, min(start + BLOCK_PROMPTS, prompts), k,
                   lengths=lengths, seed=seed)
            for start in range(0, prompts, BLOCK_PROMPTS)
        )  # fmt: skip
        held: list[_Block] = []  # blocks whose prompts are not all yielded yet
        for start in range(0, prompts, chunk_prompts):
            end = min(start + chunk_prompts, prompts)
            while not held or held[-1].hi < end:
                held.append(next(blocks))
            yield _chunk(stage, held, start, end)
            held = [block for block in held if block.hi > end]


# prompts of one random stream: a chunk of this many (the default) is one block
BLOCK_PROMPTS = 4096
# log-probs drawn (and scaled) at a time: bounds the generator's float64 buffers
PIECE_TOKENS = 1 << 16


class _Block:
    """The prompts ``lo <= prompt < hi`` (one block) of a stage of ``quality``
    in [0, 1], from the random stream of their block.

    The stream holds, in this order: the candidates' lengths, their skills, the
    log-probs of all their tokens (in prompt order) and the rewards' noise. The
    per-candidate values are drawn at once; the log-probs as chunks ask for
    them (:meth:`draw`, in order), the stream's state carried from one chunk
    to the next.
    """

    def __init__(
        self,
        stage: int,
        quality: float,
        lo: int,
        hi: int,
        k: int,
        *,
        lengths: tuple[int, int],
        seed: int,
    ) -> None:
        self.hi = hi
        self._lo = lo
        self._k = k
        self._quality = quality
        self._rng = np.random.default_rng([seed, stage, lo // BLOCK_PROMPTS])
        # the model gets better: the mean NLL per token falls from ~1.6 to ~0.3
        mean_nll = 1.6 - 1.3 * quality
        n = (hi - lo) * k
        self.prompt = np.repeat(np.arange(lo, hi, dtype=np.int32), k)
        self.cand = np.tile(np.arange(k, dtype=np.int32), hi - lo)
        self.lengths = self._rng.integers(lengths[0], lengths[1] + 1, size=n, dtype=np.int64)
        # per-response quality shifts the token NLLs; rewards follow quality
        self._skill = self._rng.normal(0.0, 0.25, size=n)
        self._scale = np.clip(mean_nll * (1.0 + self._skill), 0.05, None)
        self.offsets = _offsets(self.lengths)
        self._drawn = 0  # candidates whose log-probs are drawn
        self._reward: np.ndarray | None = None

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """The candidates (indexes into this block) of the prompts ``lo <= prompt < hi``."""
        return (max(lo - self._lo, 0) * self._k, (min(hi, self.hi) - self._lo) * self._k)

    def draw(self, a: int, b: int, out: np.ndarray) -> np.ndarray:
        """Write the log-probs of the candidates ``a:b`` into ``out`` (float32,
        ``offsets[b] - offsets[a]`` long) and return their rewards; ``a`` is the
        first candidate not drawn yet."""
        if a != self._drawn:
            msg = f"block drawn out of order: candidate {a} after {self._drawn}"
            raise AssertionError(msg)
        whole = a == 0 and b == len(self.lengths)
        if self._reward is None and not whole:
            # the rewards' noise follows all the log-probs in the stream: a copy of
            # the stream is run past them (in pieces, nothing kept)
            ahead = copy.deepcopy(self._rng)
            _exponentials(ahead, int(self.offsets[-1]), None)
            self._reward = self._rewards(ahead)
        t0, t1 = int(self.offsets[a]), int(self.offsets[b])
        _exponentials(
            self._rng, t1 - t0, out, scale=self._scale[a:b], offsets=self.offsets[a : b + 1]
        )
        self._drawn = b
        if self._reward is None:
            self._reward = self._rewards(self._rng)
        return self._reward[a:b]

    def _rewards(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.lengths)
        return np.round(1.0 * self._quality - 2.0 * self._skill + rng.normal(0.0, 0.5, n), 2)


def _exponentials(
    rng: np.random.Generator,
    size: int,
    out: np.ndarray | None,
    *,
    scale: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> None:
    """Draw ``size`` standard exponentials from ``rng``, :data:`PIECE_TOKENS` at
    a time (the stream of one draw of ``size``), and write them into ``out`` as
    float32 log-probs ``-x * scale[i]`` of the candidates ``i`` whose tokens
    start at ``offsets[i] - offsets[0]``; with ``out=None`` they are dropped."""
    buffer = np.empty(min(size, PIECE_TOKENS))
    starts = None if offsets is None else offsets - offsets[0]
    for lo in range(0, size, PIECE_TOKENS):
        hi = min(lo + PIECE_TOKENS, size)
        piece = buffer[: hi - lo]
        rng.standard_exponential(out=piece)
        if out is None or scale is None or starts is None:
            continue
        # the candidates with tokens in [lo, hi), and how many of them each
        c0 = int(np.searchsorted(starts, lo, side="right")) - 1
        c1 = int(np.searchsorted(starts, hi, side="left"))
        counts = np.minimum(starts[c0 + 1 : c1 + 1], hi) - np.maximum(starts[c0:c1], lo)
        np.multiply(piece, np.repeat(scale[c0:c1], counts), out=piece)
        np.negative(piece, out=out[lo:hi], casting="same_kind")


def _chunk(stage: int, blocks: list[_Block], lo: int, hi: int) -> SynthChunk:
    """The prompts ``lo <= prompt < hi`` of ``blocks`` (of one stage, in prompt
    order), their log-probs drawn into one array of the chunk's size."""
    spans = [(block, *block.span(lo, hi)) for block in blocks]
    spans = [(block, a, b) for block, a, b in spans if b > a]
    sizes = [int(block.offsets[b] - block.offsets[a]) for block, a, b in spans]
    logprob = np.empty(sum(sizes), dtype=np.float32)
    at = np.cumsum([0, *sizes])
    reward = [block.draw(a, b, logprob[at[i] : at[i + 1]]) for i, (block, a, b) in enumerate(spans)]
    prompt, cand, lengths = (
        np.concatenate([getattr(block, name)[a:b] for block, a, b in spans])
        for name in ("prompt", "cand", "lengths")
    )
    return SynthChunk(stage, prompt, cand, np.concatenate(reward), lengths, logprob)


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
        Output directory, new or empty; created if missing (its parents too).
        The log is written into a hidden temporary directory (beside a new
        ``out``, inside an existing one) and then renamed onto it whole, or its
        files moved into it: a run that fails or is killed leaves no part of a
        log in ``out`` (a temporary directory left by a killed run is removed
        by the next write in the same directory; reads leave it out).
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
        Prompts per written file. The log does not depend on it; the memory
        does: a chunk is drawn on its own, so the generator holds about the
        chunk's tokens (and the frames written from them) plus a few tens of
        bytes per candidate of its blocks of :data:`BLOCK_PROMPTS` prompts (see
        :func:`iter_chunks`). A split block costs a second pass over its random
        log-prob stream.
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
    if not os.fspath(out):
        msg = "OUT is an empty path; give the directory to write the log into"
        raise RaftInputError(msg)
    root = Path(out)
    if root.is_symlink() and not root.exists():
        msg = f"{str(root)!r} is a symbolic link to {os.readlink(root)!r}, which does not exist"
        raise RaftInputError(msg)
    if root.exists() and not root.is_dir():
        msg = f"{str(root)!r} exists and is not a directory"
        raise RaftInputError(msg)
    if root.is_dir():
        clean_stale(root)  # what a killed run left there
        if any(root.iterdir()):
            msg = f"{str(root)!r} is not empty; choose a new directory (logs are not mixed)"
            raise RaftInputError(msg)
    written: list[Path] = []

    def write(tmp: Path) -> None:  # the whole log, then moved to OUT at once
        tmp.mkdir()
        written.extend(
            root / path.relative_to(tmp)
            for path in _write_log(
                tmp, layout=layout, stages=stages, prompts=prompts, k=k, min_tokens=min_tokens,
                max_tokens=max_tokens, seed=seed, payload=payload, chunk_prompts=chunk_prompts,
                progress=progress,
            )
        )  # fmt: skip

    if root.is_dir():  # an empty directory (through a link too): its owner, mount stay
        write_into(root, write)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        appeared = "another process wrote it; choose a new directory (logs are not mixed)"
        write_atomically(root, write, force=False, appeared=appeared)
    return written


def _write_log(
    root: Path,
    *,
    layout: Layout,
    stages: int,
    prompts: int,
    k: int,
    min_tokens: int,
    max_tokens: int,
    seed: int,
    payload: bool,
    chunk_prompts: int,
    progress: Callable[[int, int], None] | None,
) -> list[Path]:
    """:func:`generate`'s files, written into the directory ``root``."""
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
