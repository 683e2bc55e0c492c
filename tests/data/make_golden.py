"""Write the golden files of ``tests/data`` (run once; the files are committed).

    python tests/data/make_golden.py

Good files hold the task statement's example ([1.55, 0.55, 0.15]); broken files
are the same log damaged in one way each. See ``README.md`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

HERE = Path(__file__).parent

NESTED = pl.DataFrame(
    {
        "stage": [0, 0, 1, 1, 2, 2],
        "prompt": [0, 0, 0, 0, 0, 0],
        "cand": [0, 1, 0, 1, 0, 1],
        "reward": [0.2, 0.4, 0.75, 0.7, 0.95, 0.8],
        "logprobs": [
            [-2.0, -1.8],
            [-1.5, -1.6],
            [-0.6, -0.5],
            [-0.7, -0.8],
            [-0.2, -0.1],
            [-0.3, -0.4],
        ],
        "response": ["a", "b", "c", "d", "e", "f"],
    }
)


def main() -> None:
    nested = NESTED
    nested.write_parquet(HERE / "seed_nested.parquet")
    tokens = (
        nested.select("stage", "prompt", "cand", "logprobs")
        .with_columns(pl.int_ranges(pl.col("logprobs").list.len()).alias("token"))
        .explode(["logprobs", "token"])
        .rename({"logprobs": "logprob"})
        .select("stage", "prompt", "cand", "token", "logprob")
    )
    tokens.write_parquet(HERE / "seed_tokens.parquet")
    nested.select("stage", "prompt", "cand", "reward").write_parquet(HERE / "seed_rewards.parquet")
    # Hive: stages 3, 5 and 8 as directories, no stage column inside the files
    for stage, sid in ((0, 3), (1, 5), (2, 8)):
        part = HERE / "hive" / f"stage={sid}"
        part.mkdir(parents=True, exist_ok=True)
        nested.filter(stage=stage).drop("stage").write_parquet(part / "part-0.parquet")
    # broken files
    good = (HERE / "seed_nested.parquet").read_bytes()
    (HERE / "truncated.parquet").write_bytes(good[: len(good) // 2])
    (HERE / "not_parquet.parquet").write_text("stage,prompt,cand,reward\n0,0,0,0.5\n")
    (HERE / "empty_file.parquet").write_bytes(b"")
    nested.drop("reward").write_parquet(HERE / "missing_reward.parquet")
    nested.with_columns(pl.col("reward").cast(pl.String)).write_parquet(
        HERE / "wrong_type_reward.parquet"
    )
    nested.with_columns(pl.col("logprobs").cast(pl.List(pl.String)).list.join(",")).write_parquet(
        HERE / "wrong_type_logprobs.parquet"
    )
    tokens.drop("logprob").write_parquet(HERE / "tokens_missing_logprob.parquet")
    polars_panics()


def polars_panics() -> None:
    """A nested log (3 stages x 4 prompts x 2 candidates, rewards with ties) in
    version-2 data pages, 6 rows a row group, one bit flipped in the header of
    the last row group's log-prob page: Polars 2.1's decoder panics on it in a
    thread of its streaming engine (``collect_batches`` then ends quietly after
    the first three row groups), pyarrow rejects it (found by a byte-flip search
    of that column chunk)."""
    import pyarrow.parquet as pq

    lps = [
        [[[-0.5 - 0.01 * k - 0.1 * j for k in range(3 + (i + j) % 4)] for j in range(2)]
         for i in range(4)]
        for _ in range(3)
    ]  # fmt: skip
    rows = [
        {"stage": t, "prompt": i, "cand": j, "reward": 0.1 * ((i + j + t) % 3),
         "logprobs": lps[t][i][j]}
        for t in range(3) for i in range(4) for j in range(2)
    ]  # fmt: skip
    path = HERE / "v2_page_polars_panics.parquet"
    pq.write_table(pl.DataFrame(rows).to_arrow(), path, data_page_version="2.0",
                   compression="none", row_group_size=6, use_dictionary=False)  # fmt: skip
    raw = bytearray(path.read_bytes())
    raw[2761] ^= 1 << 4
    path.write_bytes(bytes(raw))


if __name__ == "__main__":
    main()
