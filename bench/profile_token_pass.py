"""Where the time goes in the long layout's token pass.

In the long layout, ``raft_polars.stage_losses`` ranks the candidates on the small
rewards table, then makes one pass over the token rows: each row's position in the
dense ``stage x prompt x cand`` box of the ids, a gather from a 1-byte status table
at that position (0 no reward row, 1 not selected, 2 selected), a filter that drops
the unselected rows, and a ``group_by(stage, status)`` of the rest. This script
rebuilds that pass step by step with plain Polars (the status table from a numpy
best-of-K over the rewards) and times each step against the floor, Polars summing
the same four token columns. It also times a few alternatives and the whole
``stage_losses`` call, and checks that the rebuilt pass gives the tokens and losses
of ``stage_losses`` (exit 1 if not).

Variants run interleaved, ``--reps`` rounds (one untimed warm-up round first, which
also warms the page cache); the table shows the median wall time, its ratio to the
floor, and the median CPU time of the process (all threads). Each line adds one
step to the line above it, up to the full pass; below it come alternatives to
the full pass and, for scale, the whole ``stage_losses`` call.

Run from the repository root, on the data of ``bench/run.py``:

    python bench/profile_token_pass.py                       # /work/bench_data, small
    python bench/profile_token_pass.py /work/bench_data --size large --reps 7
    python bench/profile_token_pass.py path/to/long          # a data set directory

``DATA`` is either the data root of ``bench/run.py`` (the data set is then
``DATA/SIZE/long``; ``python bench/datagen.py --size small --layout long`` writes
it) or a long-layout directory holding ``tokens/`` and ``rewards/``. Integer ids
only (not the ``long_str`` data set). A round runs nine queries over the token
columns, each one to a few times the floor (0.27 s at the small size, 69 M token
rows; 2.3 s at the large size, 692 M; see docs/performance.md), so expect a few
seconds a round at the small size and well under a minute at the large one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

import raft_polars as rp

DEFAULT_DATA = Path("/work/bench_data")  # the default data root of bench/run.py
IDS = ("stage", "prompt", "cand")
NOT_SELECTED, SELECTED = 1, 2  # status table entries; 0: no reward row (or outside)
MAX_BOX = 1 << 26  # positions of the status table (a 64 MiB table)


def data_set(data: Path, size: str) -> Path:
    """The long-layout directory: ``data`` itself, or ``data/size/long``."""
    root = data if (data / "tokens").is_dir() else data / size / "long"
    if not (root / "tokens").is_dir() or not (root / "rewards").is_dir():
        sys.exit(
            f"no long-layout data set (tokens/ and rewards/) at {root}; "
            f"generate it with: python bench/datagen.py --size {size} --layout long"
        )
    return root


def status_table(keys: pl.DataFrame) -> tuple[np.ndarray, list[int], list[int]]:
    """The 1-byte status table of the box around the ids, with the box's lows and
    spans. Best-of-K with numpy: the largest reward per prompt, ties to the first
    (smallest) candidate id. The last entry stands for "outside the box"."""
    if not all(keys.schema[name].is_integer() for name in IDS):
        sys.exit("integer ids only: the string-id data set takes another path")
    if any(keys[name].has_nulls() for name in IDS):
        sys.exit("the rewards hold null ids; run `raft-polars validate` on the data set")
    lows = [int(keys[name].min()) for name in IDS]  # type: ignore[arg-type]
    spans = [
        int(keys[name].max()) - low + 1  # type: ignore[arg-type]
        for name, low in zip(IDS, lows, strict=True)
    ]
    size = spans[0] * spans[1] * spans[2]
    if size > MAX_BOX:
        sys.exit(f"the ids span a box of {size:,} positions (more than {MAX_BOX:,})")
    index = np.zeros(keys.height, dtype=np.int64)
    for name, low, span in zip(IDS, lows, spans, strict=True):
        index *= span
        index += keys[name].to_numpy().astype(np.int64) - low
    rewards = np.full(size, -np.inf)
    rewards[index] = keys["reward"].cast(pl.Float64).to_numpy()
    present = np.zeros(size, dtype=bool)
    present[index] = True
    by_prompt = rewards.reshape(-1, spans[2])
    best = by_prompt.argmax(axis=1)  # the first maximum: the smallest candidate id
    prompts = np.flatnonzero(present.reshape(-1, spans[2]).any(axis=1))
    table = np.zeros(size + 1, dtype=np.uint8)
    table[index] = NOT_SELECTED
    table[prompts * spans[2] + best[prompts]] = SELECTED
    return table, lows, spans


def position(schema: pl.Schema, lows: list[int], spans: list[int]) -> list[pl.Expr]:
    """Each id's offset from the box's low corner: Int32 arithmetic on Int32 ids
    when the whole box fits it, as the engine does; Int64 otherwise."""
    narrow = spans[0] * spans[1] * spans[2] < 2**31 and all(
        schema[name] == pl.Int32 and low >= -(2**31) and low + span <= 2**31
        for name, low, span in zip(IDS, lows, spans, strict=True)
    )
    parts = []
    for name, low in zip(IDS, lows, strict=True):
        column = pl.col(name) if narrow or schema[name] == pl.Int64 else pl.col(name).cast(pl.Int64)
        parts.append(column if low == 0 else column - low)
    return parts


def variants(root: Path) -> tuple[dict[str, Callable[[], object]], Callable[[], pl.DataFrame]]:
    """The timed variants, and the rebuilt full pass with its bounds checked (for
    the check: a row outside the box gets status 0, as one without a reward row)."""
    tokens_glob = str(root / "tokens" / "**" / "*.parquet")
    rewards_glob = str(root / "rewards" / "**" / "*.parquet")
    scan = pl.scan_parquet(tokens_glob).select(*IDS, "logprob")
    keys = pl.read_parquet(rewards_glob, columns=[*IDS, "reward"])
    table, lows, spans = status_table(keys)
    del keys
    size = len(table) - 1
    status = pl.lit(pl.Series("table", table))
    parts = position(scan.collect_schema(), lows, spans)
    flat = (parts[0] * spans[1] + parts[1]) * spans[2] + parts[2]
    inside = pl.all_horizontal(
        *(part.reinterpret(signed=False) < span for part, span in zip(parts, spans, strict=True))
    )
    checked = pl.when(inside).then(flat).otherwise(size)  # null ids: outside too
    lp = pl.col("logprob")
    aggs = [
        (-lp.cast(pl.Float64).sum()).alias("nll"),
        pl.len().alias("tokens"),
        lp.max().alias("lp_max"),
        lp.null_count().alias("lp_nulls"),
    ]

    def run(query: pl.LazyFrame) -> Callable[[], pl.DataFrame]:
        return lambda: query.collect(engine="streaming")

    with_status = scan.with_columns(status.gather(flat).alias("status"))
    kept = with_status.filter(pl.col("status") != NOT_SELECTED)
    full = kept.group_by("stage", "status").agg(aggs)
    checked_full = (
        scan.with_columns(status.gather(checked).alias("status"))
        .filter(pl.col("status") != NOT_SELECTED)
        .group_by("stage", "status")
        .agg(aggs)
    )
    tokens_dir, rewards_dir = str(root / "tokens"), str(root / "rewards")
    timed: dict[str, Callable[[], object]] = {
        "floor: sum of the 4 token columns": run(scan.select(pl.col(*IDS, "logprob").sum())),
        "+ box position (summed)": run(scan.select(flat.sum(), lp.sum())),
        "+ gather from the status table (summed)": run(
            with_status.select(pl.col("status").cast(pl.UInt32).sum(), lp.sum())
        ),
        "+ filter out unselected rows (summed)": run(
            kept.select(pl.col("status").cast(pl.UInt32).sum(), lp.sum())
        ),
        "+ group_by(stage, status): the full pass": run(full),
        "full pass, bounds checked per row": run(checked_full),
        "full pass, sum and count only": run(kept.group_by("stage", "status").agg(aggs[:2])),
        "filter, then group_by(stage)": run(
            scan.filter(status.gather(flat) == SELECTED).group_by("stage").agg(aggs)
        ),
        "rp.stage_losses, the whole call": lambda: rp.stage_losses(tokens_dir, rewards=rewards_dir),
    }
    return timed, run(checked_full)


def check(root: Path, rebuilt: pl.DataFrame) -> bool:
    """Whether the rebuilt pass gives the tokens and losses of ``stage_losses``."""
    engine = rp.stage_losses(str(root / "tokens"), rewards=str(root / "rewards"))
    if rebuilt.filter(pl.col("status") == 0).height:
        print(
            "token rows without a reward row (or outside the box of the rewards' ids); "
            "run `raft-polars validate` on the data set"
        )
        return False
    mine = rebuilt.filter(pl.col("status") == SELECTED).sort("stage")
    same_tokens = mine["tokens"].to_list() == engine["tokens"].to_list()
    loss = (mine["nll"] / mine["tokens"]).to_numpy()
    same_loss = len(loss) == engine.height and bool(
        np.allclose(loss, engine["loss"].to_numpy(), rtol=1e-12, atol=0.0)
    )
    print(
        f"check against rp.stage_losses: tokens per stage equal: {same_tokens}, "
        f"losses equal (rtol 1e-12): {same_loss}"
    )
    return same_tokens and same_loss


def main() -> None:
    parser = argparse.ArgumentParser(
        description="where the time goes in the long layout's token pass"
    )
    parser.add_argument(
        "data",
        nargs="?",
        type=Path,
        default=DEFAULT_DATA,
        help=f"data root of bench/run.py or a long-layout directory (default {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--size",
        choices=["small", "large"],
        default="small",
        help="data set under the data root (default small)",
    )
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args()
    root = data_set(args.data, args.size)
    timed, full = variants(root)
    print(f"data set {root}, polars {pl.__version__}, raft_polars {rp.__version__}")
    if not check(root, full()):
        sys.exit(1)
    wall: dict[str, list[float]] = {name: [] for name in timed}
    cpu: dict[str, list[float]] = {name: [] for name in timed}
    for round_ in range(args.reps + 1):  # round 0: warm-up, not counted
        for name, call in timed.items():
            c0, t0 = time.process_time(), time.perf_counter()
            call()
            if round_:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    floor = statistics.median(wall["floor: sum of the 4 token columns"])
    print(f"\n{'':42s} {'wall med':>9s} {'x floor':>8s} {'cpu med':>8s}")
    for name in timed:
        median = statistics.median(wall[name])
        print(
            f"{name:42s} {median:8.3f}s {median / floor:7.2f}x {statistics.median(cpu[name]):7.3f}s"
        )


if __name__ == "__main__":
    main()
