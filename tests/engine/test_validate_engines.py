"""``validate`` on every executor: the same report, and the right counts when a
response's token rows are spread over several files (the Dask executor then
aggregates those responses again from their rows)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import dask_cluster
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import long_frames, nested_frame, report_places, write_split
from strategies import ragged_logs

import raft_polars as rp
import raft_polars.dask as rd

LPS = [[[[-1.0, -2.0, -0.5], [-2.0, -4.0]], [[-0.5, -0.5], [-3.0]]], [[[-0.25], [-1.0]]]]
RWS = [[[0.1, 0.9], [0.7, 0.2]], [[1.0, 0.0]]]
_IDS = ["stage", "prompt", "cand"]


def _report(engine: str, **kwargs: Any) -> dict[str, Any]:
    on: rd.DaskEngine | Literal["polars"] = dask_cluster.engine() if engine == "dask" else "polars"
    return rp.validate(**kwargs, engine=on).to_dict()


def _both(**kwargs: Any) -> dict[str, Any]:
    local = _report("polars", **kwargs)
    assert _report("dask", **kwargs) == local
    return local


def _counts(report: dict[str, Any]) -> dict[str, int]:
    return {p["kind"]: p["count"] for p in report["problems"]}


def test_clean_log_split_over_files(tmp_path: Path) -> None:
    tokens, rewards = long_frames(LPS, RWS, shuffle=3)
    write_split(tokens, tmp_path / "t", 3)  # rows dealt round-robin: responses split
    write_split(rewards, tmp_path / "r", 2)
    report = _both(source=str(tmp_path / "t"), rewards=str(tmp_path / "r"))
    assert report["ok"]
    assert report["summary"] == {"stages": 2, "prompts": 3, "candidates": 6, "tokens": 10}


def test_token_problems_across_files(tmp_path: Path) -> None:
    tokens, rewards = long_frames(LPS, RWS)
    first = (pl.col("stage") == 0) & (pl.col("prompt") == 0) & (pl.col("cand") == 0)
    # the same position in two files, a gap, a bad value, a token without reward
    dup = tokens.filter(first & (pl.col("token") == 1))
    other = (pl.col("stage") == 0) & (pl.col("prompt") == 0) & (pl.col("cand") == 1)
    gap = tokens.filter(~(other & (pl.col("token") == 0)))
    bad = gap.with_columns(
        pl.when(first & (pl.col("token") == 0)).then(0.5).otherwise("logprob").alias("logprob")
    )
    orphan = tokens.head(1).with_columns(pl.lit(9, pl.Int64).alias("cand"))
    write_split(bad, tmp_path / "t", 2)
    dup.write_parquet(tmp_path / "t" / "part-dup.parquet")
    orphan.write_parquet(tmp_path / "t" / "part-orphan.parquet")
    rewards.write_parquet(tmp_path / "rewards.parquet")
    report = _both(source=str(tmp_path / "t"), rewards=str(tmp_path / "rewards.parquet"))
    assert _counts(report) == {
        "bad_logprob_unselected": 1,
        "orphan_tokens": 1,
        "duplicate_token": 1,
        "token_gap": 1,
    }
    dup_place = next(p for p in report["problems"] if p["kind"] == "duplicate_token")
    assert dup_place["locations"] == [{"stage": 0, "prompt": 0, "cand": 0, "token": 1, "rows": 2}]


def test_nested_problems_across_files(tmp_path: Path) -> None:
    frame = nested_frame(LPS, RWS, shuffle=1)
    best = (pl.col("stage") == 0) & (pl.col("prompt") == 0) & (pl.col("cand") == 1)
    frame = frame.with_columns(
        pl.when(best).then(pl.lit([-1.0, float("nan")])).otherwise("logprobs").alias("logprobs")
    )
    write_split(pl.concat([frame, frame.head(1)]), tmp_path / "n", 3)  # a duplicate too
    report = _both(source=str(tmp_path / "n"))
    assert _counts(report) == {"duplicate_candidate": 1, "bad_logprob_selected": 1}


@pytest.mark.parametrize("strategy", [{}, {"strategy": "global", "fraction": 0.5}])
def test_selection_options(tmp_path: Path, strategy: dict[str, Any]) -> None:
    write_split(nested_frame(LPS, RWS, shuffle=2), tmp_path / "n", 2)
    assert _both(source=str(tmp_path / "n"), **strategy)["ok"]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    log=ragged_logs(max_stages=2),
    parts=st.integers(1, 3),
    layout=st.sampled_from(["nested", "long"]),
    drop=st.integers(0, 50),
    copy=st.integers(0, 50),
)
def test_random_faults_same_report(
    log: tuple[list[Any], list[Any]], parts: int, layout: str, drop: int, copy: int
) -> None:
    """Random logs with a dropped and a duplicated row, spread over files: the
    same report on both executors."""
    lps, rws = log
    with tempfile.TemporaryDirectory() as tmp:
        _both(
            **_write_faulty(lps, rws, Path(tmp), layout=layout, drop=drop, copy=copy, parts=parts)
        )


def _write_faulty(
    lps: list[Any],
    rws: list[Any],
    root: Path,
    *,
    layout: str,
    drop: int,
    copy: int,
    parts: int,
    named: Callable[[pl.DataFrame], pl.DataFrame] = lambda frame: frame,
    copy_reward: bool = False,
) -> dict[str, Any]:
    """A log with a duplicated row (nested) or a duplicated and a dropped token
    row (long), rows shuffled by ``drop``, written under ``root`` over ``parts``
    files, each frame through ``named``; with ``copy_reward``, the first reward
    row written twice when ``copy`` is odd. validate's arguments for it."""
    if layout == "nested":
        frame = nested_frame(lps, rws, shuffle=drop)
        frame = pl.concat([frame, frame.slice(copy % frame.height, 1)])
        write_split(named(frame), root / "n", parts)
        return {"source": str(root / "n")}
    tokens, rewards = long_frames(lps, rws, shuffle=drop)
    if tokens.height:
        tokens = pl.concat([tokens, tokens.slice(copy % tokens.height, 1)])
        tokens = tokens.filter(pl.int_range(pl.len()) != drop % tokens.height)
    if copy_reward:
        rewards = pl.concat([rewards, rewards.head(copy % 2)])
    write_split(named(tokens), root / "t", parts)
    write_split(named(rewards), root / "r", 1)
    return {"source": str(root / "t"), "rewards": str(root / "r")}


def _as_text(frame: pl.DataFrame, names: dict[int, str]) -> pl.DataFrame:
    return frame.with_columns(pl.col("prompt").replace_strict(names, return_dtype=pl.String))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    log=ragged_logs(max_stages=2),
    layout=st.sampled_from(["nested", "long"]),
    drop=st.integers(0, 50),
    copy=st.integers(0, 50),
    seed=st.integers(0, 1000),
    ranking=st.sampled_from(["best", "global"]),
)
def test_text_prompt_ids_same_report_as_integers(
    *, log: tuple[list[Any], list[Any]], layout: str, drop: int, copy: int, seed: int, ranking: str
) -> None:
    """A log whose prompt ids are text (rows not sorted by the text) gets the
    report of the same log with integer ids: the same problems, counts and
    places (validate codes text ids as integers, numbered as they appear). The
    texts sort unlike the integers, except for the global ranking, whose ties
    go to the smallest prompt id: there they sort alike."""
    import random

    lps, rws = log
    prompts = sorted({i for stage in rws for i in range(len(stage))} | {0})
    order = list(range(len(prompts) + 1))
    if ranking == "best":
        random.Random(seed).shuffle(order)
    names = {p: f"p{order[i]:03d}-{p}" for i, p in enumerate(prompts)}
    strategy: dict[str, Any] = (
        {"strategy": "global", "fraction": 0.5} if ranking == "global" else {}
    )
    back = {v: k for k, v in names.items()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reports = []
        for text in (False, True):

            def named(frame: pl.DataFrame, text: bool = text) -> pl.DataFrame:
                return _as_text(frame, names) if text else frame

            where = root / ("text" if text else "ints")
            kwargs = _write_faulty(
                lps, rws, where, layout=layout, drop=drop, copy=copy, parts=2, named=named,
                copy_reward=True,
            )  # fmt: skip
            reports.append(_both(**kwargs, **strategy, limit=1000))
    ints, texts = reports
    assert texts["ok"] == ints["ok"]
    assert texts["summary"] == ints["summary"]
    assert report_places(texts, back) == report_places(ints)


def test_global_ties_go_to_the_smallest_text_prompt(tmp_path: Path) -> None:
    """The global ranking's ties go to the smallest prompt id, for text ids too,
    whatever order the rows come in ("b" written before "a"): validate takes
    "a"'s response as selected, so its bad log-prob is a selected one."""
    frame = pl.DataFrame({
        "stage": [0, 0], "prompt": ["b", "a"], "cand": [0, 0], "reward": [1.0, 1.0],
        "logprobs": [[-1.0, -0.5], [-1.0, 0.7]],
    })  # fmt: skip
    frame.write_parquet(tmp_path / "log.parquet")
    report = _both(source=str(tmp_path / "log.parquet"), strategy="global", fraction=0.5)
    bad = report["problems"]
    assert [(p["kind"], p["count"]) for p in bad] == [("bad_logprob_selected", 1)]
    assert bad[0]["locations"][0]["prompt"] == "a"


def test_categorical_ids_and_no_token_row(tmp_path: Path) -> None:
    """Categorical prompt ids and a token file without a row: every selected
    response is empty (the empty pass's ids had a default type, and the join
    with the candidates' text ids failed)."""
    rewards = pl.DataFrame({
        "stage": [0, 0], "prompt": ["x", "y"], "cand": [0, 0], "reward": [0.5, 0.25],
    }).with_columns(pl.col("prompt").cast(pl.Categorical))  # fmt: skip
    tokens = pl.DataFrame(
        schema={"stage": pl.Int64, "prompt": pl.Categorical, "cand": pl.Int64,
                "token": pl.Int64, "logprob": pl.Float64}
    )  # fmt: skip
    (tmp_path / "t").mkdir()
    (tmp_path / "r").mkdir()
    tokens.write_parquet(tmp_path / "t" / "part-0.parquet")
    rewards.write_parquet(tmp_path / "r" / "part-0.parquet")
    report = _both(source=str(tmp_path / "t"), rewards=str(tmp_path / "r"))
    assert [(p["kind"], p["count"]) for p in report["problems"]] == [("empty_stage", 1)]
    assert report["problems"][0]["locations"] == [{"stage": 0, "selected": 2}]


# --- token positions: the proof of order and its exceptions ---------------------------------


def _reference_positions(tokens: pl.DataFrame) -> dict[str, int]:
    """Duplicate, gap and null-position counts of token rows, response by response."""
    found = {"duplicate_token": 0, "token_gap": 0, "null_token_position": 0}
    positions: dict[tuple[Any, ...], list[int | None]] = {}
    for stage, prompt, cand, token in tokens.select("stage", "prompt", "cand", "token").rows():
        positions.setdefault((stage, prompt, cand), []).append(token)
    for every in positions.values():
        present = [t for t in every if t is not None]
        distinct = set(present)
        found["null_token_position"] += len(every) - len(present)
        found["duplicate_token"] += len(present) - len(distinct)
        if distinct and (min(distinct) != 0 or max(distinct) != len(distinct) - 1):
            found["token_gap"] += 1
    return {kind: count for kind, count in found.items() if count}


def _long_log(root: Path, positions: list[list[int | None]], files: int, group: int) -> None:
    """One prompt, a response per position list (each with a reward row), its token
    rows cut into ``files`` files in order, ``group`` rows a row group."""
    rows = [(0, 0, cand, token, -1.0) for cand, tokens in enumerate(positions) for token in tokens]
    ids = {name: pl.Int64 for name in ("stage", "prompt", "cand", "token")}
    tokens = pl.DataFrame(rows, schema={**ids, "logprob": pl.Float64}, orient="row")
    (root / "t").mkdir(parents=True)
    size = -(-tokens.height // files)
    for part in range(files):
        chunk = tokens.slice(part * size, size)
        chunk.write_parquet(root / "t" / f"part-{part}.parquet", row_group_size=group)
    rewards = pl.DataFrame(
        {"stage": 0, "prompt": 0, "cand": range(len(positions)), "reward": 1.0}
    ).with_columns(pl.col("cand").cast(pl.Int64))
    rewards.write_parquet(root / "rewards.parquet")


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        ([[0, 1, 2], [0, 1]], {}),
        ([[2, 0, 1]], {}),  # out of order, each once
        ([[3, 4, 0, 1, 2]], {}),  # two runs that tile 0..4
        ([[0, 0, 2]], {"duplicate_token": 1, "token_gap": 1}),  # n rows, min 0, max n - 1
        ([[0, 1, 0, 1]], {"duplicate_token": 2}),
        ([[0, 2, 1, 2, 4]], {"duplicate_token": 1, "token_gap": 1}),
        ([[1, 2, 3]], {"token_gap": 1}),
        ([[0, None, 1]], {"null_token_position": 1}),
        ([[None]], {"null_token_position": 1}),
    ],
)
def test_token_positions(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    positions: list[list[int | None]],
    expected: dict[str, int],
) -> None:
    """Positions that only a count, a minimum and a maximum would take for
    ``0 .. n-1``, runs that tile it, and each response cut over files and row-group
    shards: the counts of a plain reference, on both executors."""
    import raft_polars._executors.dask

    monkeypatch.setattr(raft_polars._executors.dask, "SHARD_BYTES", 1)  # a row group a shard
    _long_log(tmp_path, positions, files=2, group=2)
    report = _both(source=str(tmp_path / "t"), rewards=str(tmp_path / "rewards.parquet"))
    tokens = pl.read_parquet(tmp_path / "t")
    assert _counts(report) == expected == _reference_positions(tokens)
    assert report["summary"]["tokens"] == tokens.height


_POSITIONS = st.lists(st.one_of(st.none(), st.integers(0, 6)), max_size=7)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lists=st.lists(
        st.one_of(_POSITIONS, st.integers(0, 7).map(lambda n: list(range(n)))), max_size=4
    ),
    files=st.integers(1, 3),
    group=st.integers(1, 4),
)
def test_token_positions_against_a_reference(
    lists: list[list[int | None]], files: int, group: int
) -> None:
    """Random positions (in order, shuffled, repeated, missing, null) cut over files
    and row groups: duplicate, gap and null counts of a plain reference, on both
    executors (in process, a row group a unit of the strict read: runs go on from
    one unit to the next)."""
    import raft_polars._engine.validate
    import raft_polars._executors.dask

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(raft_polars._executors.dask, "SHARD_BYTES", 1)
        patch.setattr(raft_polars._engine.validate, "_UNIT_ROWS", 1)
        root = Path(tmp)
        _long_log(root, lists or [[]], files, group)
        report = _both(source=str(root / "t"), rewards=str(root / "rewards.parquet"))
        tokens = pl.read_parquet(root / "t")
        got = {k: v for k, v in _counts(report).items() if k in _reference_positions(tokens)}
        assert got == _reference_positions(tokens)
        assert report["summary"]["tokens"] == tokens.height


def test_short_runs_are_added_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Token rows not grouped by response (every row its own run) are added up per
    response as they come: the same report as when they are kept apart."""
    import raft_polars._engine.validate as kernels

    tokens, rewards = long_frames(LPS, RWS, shuffle=5)
    dup = tokens.head(1)
    write_split(pl.concat([tokens, dup, tokens.head(0)]), tmp_path / "t", 2)
    rewards.write_parquet(tmp_path / "rewards.parquet")
    kwargs = {"source": str(tmp_path / "t"), "rewards": str(tmp_path / "rewards.parquet")}
    apart = _both(**kwargs)
    monkeypatch.setattr(kernels, "_ADD_UP", 1)
    assert _report("polars", **kwargs) == apart
    assert _counts(apart) == {"duplicate_token": 1}


@pytest.mark.parametrize("variant", ["renamed", "hive", "one_stage"])
def test_token_rows_read_as_the_source_says(tmp_path: Path, variant: str) -> None:
    """Token rows under other column names, under Hive directories or without a
    stage column: the same problems as the canonical files hold, on both executors
    (the strict reader feeds the token pass straight, or through Polars)."""
    lps, rws = (LPS[:1], RWS[:1]) if variant == "one_stage" else (LPS, RWS)
    tokens, rewards = long_frames(lps, rws)
    tokens = pl.concat([tokens, tokens.slice(2, 1)])  # a repeated position
    kwargs: dict[str, Any] = {}
    (tmp_path / "plain").mkdir()
    tokens.write_parquet(tmp_path / "plain" / "t.parquet")
    rewards.write_parquet(tmp_path / "plain" / "r.parquet")
    want = _both(
        source=str(tmp_path / "plain" / "t.parquet"), rewards=str(tmp_path / "plain" / "r.parquet")
    )
    root = tmp_path / variant
    root.mkdir()
    if variant == "renamed":
        names = {"prompt": "prompt_id", "cand": "sample", "token": "pos", "logprob": "lp"}
        tokens, rewards = tokens.rename(names, strict=False), rewards.rename(names, strict=False)
        kwargs["columns"] = names
    elif variant == "hive":
        for (stage,), part in tokens.partition_by("stage", as_dict=True).items():
            (root / "t" / f"stage={stage}").mkdir(parents=True)
            part.drop("stage").write_parquet(root / "t" / f"stage={stage}" / "part.parquet")
    else:
        tokens, rewards = tokens.drop("stage"), rewards.drop("stage")
    if variant != "hive":
        (root / "t").mkdir()
        tokens.write_parquet(root / "t" / "part.parquet")
    rewards.write_parquet(root / "r.parquet")
    got = _both(source=str(root / "t"), rewards=str(root / "r.parquet"), **kwargs)
    assert got["problems"] == want["problems"]
    assert got["summary"] == want["summary"]
    assert _counts(got) == {"duplicate_token": 1}


def _encrypted(path: Path, *, plaintext_footer: bool) -> None:
    """The seed's nested log with its ``reward`` column encrypted (Parquet modular
    encryption, an in-process key store: nothing leaves this machine)."""
    import base64

    import pyarrow.parquet as pq
    import pyarrow.parquet.encryption as pe

    class Keys(pe.KmsClient):  # type: ignore[misc]
        def __init__(self, _: object) -> None:
            super().__init__()

        def wrap_key(self, key: bytes, _: str) -> bytes:
            return base64.b64encode(key)

        def unwrap_key(self, wrapped: bytes, _: str) -> bytes:
            return base64.b64decode(wrapped)

    table = pq.read_table(Path(__file__).parents[2] / "data" / "seed" / "nested.parquet")
    config = pe.EncryptionConfiguration(
        footer_key="f", column_keys={"c": ["reward"]}, double_wrapping=False,
        plaintext_footer=plaintext_footer,
    )  # fmt: skip
    properties = pe.CryptoFactory(Keys).file_encryption_properties(pe.KmsConnectionConfig(), config)
    with pq.ParquetWriter(path, table.schema, encryption_properties=properties) as writer:
        writer.write_table(table)


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("plaintext_footer", [True, False], ids=["column", "footer"])
def test_an_encrypted_file_is_an_input_error(
    tmp_path: Path, engine: str, plaintext_footer: bool
) -> None:
    """An encrypted column is not a corrupt file (validate reported
    corrupt_file, exit 1, where stage_losses said it cannot read it): every
    entry point raises an input error naming the file. (Planning it on Dask
    asked pyarrow for its column chunks, which ended the process.)"""
    path = tmp_path / "encrypted.parquet"
    _encrypted(path, plaintext_footer=plaintext_footer)
    with pytest.raises(rp.RaftInputError, match=r"encrypted\.parquet.*(?i:encrypt)"):
        _report(engine, source=str(path))
    on: rd.DaskEngine | Literal["polars"] = dask_cluster.engine() if engine == "dask" else "polars"
    with pytest.raises(rp.RaftInputError, match=r"(?i:encrypt)"):
        rp.stage_losses(str(path), engine=on)


def test_a_file_removed_while_validate_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part removed (a pipeline's cleanup) between the listing and the strict
    read is an input error saying so, not a corrupt file in the report."""
    import pyarrow.parquet as pq

    import raft_polars._engine.validate as kernels

    path = tmp_path / "log.parquet"
    seed = pq.read_table(Path(__file__).parents[2] / "data" / "seed" / "nested.parquet")
    pq.write_table(seed, path)  # no page checksums: the strict read decodes it
    read = kernels._units

    def removed_first(name: str, rows: tuple[int, int] | None) -> list[Any]:
        Path(name).unlink(missing_ok=True)
        return read(name, rows)

    monkeypatch.setattr(kernels, "_units", removed_first)
    with pytest.raises(rp.RaftInputError, match=r"log\.parquet.*removed or renamed while validate"):
        rp.validate(str(path))


@pytest.mark.parametrize("name", ["encrypted", "decrypt_status"])
def test_a_column_named_encrypted_is_not_encryption(tmp_path: Path, name: str) -> None:
    """A corrupt file whose error names a column called ``encrypted`` is
    ``corrupt_file``: encryption is told by the file's structure, not by the
    words of a message (a review found the words)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = pa.array([b"ok", b"\xff\xfe"], pa.binary()).cast(pa.string(), safe=False)
    table = pa.table({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.5, 0.25],
                      "logprobs": [[-1.0], [-2.0]], name: text})  # fmt: skip
    path = tmp_path / "log.parquet"
    pq.write_table(table, path, use_dictionary=False)
    report = rp.validate(str(path)).to_dict()
    assert [p["kind"] for p in report["problems"]] == ["corrupt_file"], report


# --- column types of the token rows -------------------------------------------------------


def _faulty_long() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Token rows with a positive log-prob (unselected candidate) and a repeated
    position, and their rewards."""
    tokens, rewards = long_frames(LPS, RWS)
    first = (pl.col("stage") == 0) & (pl.col("prompt") == 0) & (pl.col("cand") == 0)
    bad = pl.when(first & (pl.col("token") == 1)).then(0.5).otherwise("logprob")
    tokens = tokens.with_columns(bad.alias("logprob"))
    return pl.concat([tokens, tokens.filter(first & (pl.col("token") == 0))]), rewards


LOGPROB_TYPES = {
    "decimal": pl.Decimal(10, 4),
    "float16": pl.Float16(),
    "float32": pl.Float32(),
}


def _sources(tokens: pl.DataFrame, rewards: pl.DataFrame, root: Path | None) -> dict[str, Any]:
    if root is None:
        return {"source": tokens, "rewards": rewards}
    write_split(tokens, root / "t", 2)
    write_split(rewards, root / "r", 1)
    return {"source": str(root / "t"), "rewards": str(root / "r")}


def _without_names(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "origin"}


@pytest.mark.parametrize("form", ["frame", "files"])
@pytest.mark.parametrize("kind", LOGPROB_TYPES, ids=str)
def test_logprob_types_same_report_as_float64(tmp_path: Path, kind: str, form: str) -> None:
    """Log-probs of any numeric type (decimals and Float16, which the compiled
    pass cannot read, widened to Float64 as the losses widen them): the report
    of the same log-probs as Float64, on both executors (a decimal was a bare
    numba TypingError, Float16 a NotImplementedError)."""
    tokens, rewards = _faulty_long()
    typed = tokens.with_columns(pl.col("logprob").cast(LOGPROB_TYPES[kind]))
    plain = typed.with_columns(pl.col("logprob").cast(pl.Float64))
    root = None if form == "frame" else tmp_path
    expected = _both(**_sources(plain, rewards, None if root is None else root / "plain"))
    got = _both(**_sources(typed, rewards, None if root is None else root / "typed"))
    assert _without_names(got) == _without_names(expected)
    assert _counts(got) == {"bad_logprob_unselected": 1, "duplicate_token": 1}


@pytest.mark.parametrize("form", ["frame", "files"])
@pytest.mark.parametrize("kind", [pl.UInt64(), pl.Int128(), pl.UInt8()], ids=str)
def test_token_position_types_same_report_as_int64(
    tmp_path: Path, kind: pl.DataType, form: str
) -> None:
    """Positions of any integer type: the report of the same positions as Int64."""
    tokens, rewards = _faulty_long()
    typed = tokens.with_columns(pl.col("token").cast(kind))
    root = None if form == "frame" else tmp_path
    expected = _both(**_sources(tokens, rewards, None if root is None else root / "plain"))
    got = _both(**_sources(typed, rewards, None if root is None else root / "typed"))
    if form == "files" and kind == pl.Int128:
        assert len(got.pop("skipped")) == 2  # the two token files: see the next test
        expected.pop("skipped")
    assert _without_names(got) == _without_names(expected)


@pytest.mark.parametrize("layout", ["long", "nested"])
@pytest.mark.parametrize("column", ["stage", "prompt", "cand"])
@pytest.mark.parametrize("dtype", [pl.Int128(), pl.UInt128()], ids=str)
def test_128_bit_ids_in_files_are_not_corrupt(
    tmp_path: Path, layout: str, column: str, dtype: pl.DataType
) -> None:
    """Parquet files of 128-bit integers (as Polars writes them), which pyarrow,
    the strict reader, refuses whole: the report of the same ids as Int64, every
    problem found, and each such file named as decoded by Polars alone (they were
    reported as corrupt files)."""
    tokens, rewards = _faulty_long()
    if layout == "nested":
        plain = tokens.group_by(_IDS, maintain_order=True).agg(pl.col("logprob").alias("logprobs"))
        plain = plain.join(rewards, on=_IDS).with_columns(
            pl.when(pl.col("prompt") == 1)
            .then(pl.lit([0.5, -1.0]))
            .otherwise("logprobs")
            .alias("logprobs")
        )  # a log-prob above 0, for a problem in the file
        sources = {}
        for name, frame in (("plain", plain), ("wide", plain.cast({column: dtype}))):
            write_split(frame, tmp_path / name, 2)
            sources[name] = {"source": str(tmp_path / name)}
    else:
        plain_src = _sources(tokens, rewards, tmp_path / "plain")
        wide = _sources(tokens.cast({column: dtype}), rewards.cast({column: dtype}), tmp_path / "w")
        sources = {"plain": plain_src, "wide": wide}
    expected = _both(**sources["plain"])
    got = _both(**sources["wide"])
    files = sorted(str(p) for p in (tmp_path / ("wide" if layout == "nested" else "w")).rglob("*"))
    files = [f for f in files if f.endswith(".parquet")]
    notes = got.pop("skipped")
    assert len(notes) == len(files) == (2 if layout == "nested" else 3)
    for file, note in zip(files, sorted(notes), strict=True):
        assert repr(file) in note
        assert f"['{column}'] are 128-bit integers" in note
    assert expected.pop("skipped") == []
    assert expected["problems"], "the log has problems to find"
    assert _without_names(got) == _without_names(expected)


@pytest.mark.parametrize("form", ["frame", "files"])
def test_token_positions_beyond_int64(tmp_path: Path, form: str) -> None:
    """UInt64 positions from 2**63 on, which Int64 does not hold: compared
    exactly, each response's positions reported as they are (validate raised a
    bare polars InvalidOperationError from a cast to Int64)."""
    tokens, rewards = long_frames(LPS, RWS)
    far = tokens.with_columns(pl.col("token").cast(pl.UInt64) + 2**63)
    root = None if form == "frame" else tmp_path
    report = _both(**_sources(far, rewards, root), limit=10)
    assert _counts(report) == {"token_gap": 6}
    gaps = {
        (g["stage"], g["prompt"], g["cand"]): (g["first_pos"], g["last_pos"], g["positions"])
        for g in report["problems"][0]["locations"]
    }
    lengths = tokens.group_by("stage", "prompt", "cand").len().rows()
    assert gaps == {(s, p, c): (2**63, 2**63 + n - 1, n) for s, p, c, n in lengths}


@pytest.mark.parametrize("layout", ["long", "nested"])
def test_corrupt_128_bit_file_is_corrupt(tmp_path: Path, layout: str) -> None:
    """A file of 128-bit ids that Polars cannot decode either (a page's bytes
    flipped): a corrupt file, with Polars' error, not a skipped strict read."""
    n = 2000
    frame = pl.DataFrame(
        {
            "stage": [0] * n,
            "prompt": pl.Series(range(n), dtype=pl.Int128),
            "cand": [0] * n,
            "reward": [0.5] * n,
            "logprobs": [[-1.0, -2.0]] * n,
        }
    )
    path = tmp_path / "log.parquet"
    if layout == "nested":
        frame.write_parquet(path, compression="zstd", statistics=False)
        kwargs: dict[str, Any] = {"source": str(path)}
    else:
        tokens = frame.drop("reward").explode("logprobs").rename({"logprobs": "logprob"})
        tokens.write_parquet(path, compression="zstd", statistics=False)
        rewards = frame.drop("logprobs").cast({"prompt": pl.Int64})
        kwargs = {"source": str(path), "rewards": rewards}
    data = bytearray(path.read_bytes())
    data[60:76] = bytes(b ^ 0xFF for b in data[60:76])  # inside the first data page
    path.write_bytes(bytes(data))
    with pytest.raises(pl.exceptions.ComputeError):
        pl.read_parquet(path)
    report = _both(**kwargs)
    assert not any("128-bit" in note for note in report["skipped"])
    corrupt = [p for p in report["problems"] if p["kind"] == "corrupt_file"]
    assert [loc["file"] for loc in corrupt[0]["locations"]] == [str(path)]


@pytest.mark.parametrize("flipped", [False, True], ids=["sound", "flipped"])
def test_128_bit_file_with_suspect_headers_is_read_in_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flipped: bool
) -> None:
    """A 128-bit file whose page headers the walk suspects is not decoded by Polars
    in this process (a corrupted header can end it) but in a child, whose verdict
    ``polars_refusals`` gives: a sound file is still only a skipped strict read, a
    flipped page still a corrupt file (local executor: the walk's verdict is
    patched, as no writer tried writes such headers)."""
    from raft_polars._engine import pages

    tokens, rewards = _faulty_long()
    root = tmp_path / "w"
    sources = _sources(tokens.cast({"prompt": pl.Int128}), rewards, root)
    files = sorted((root / "t").glob("*.parquet"))
    if flipped:
        data = bytearray(files[0].read_bytes())
        data[40:56] = bytes(b ^ 0xFF for b in data[40:56])
        files[0].write_bytes(bytes(data))
    expected = _report("polars", **sources)
    monkeypatch.setattr(pages, "suspect", lambda path: True)
    got = _report("polars", **sources)
    assert got == expected
    wide = [note for note in got["skipped"] if "128-bit" in note]
    corrupt = [p for p in got["problems"] if p["kind"] == "corrupt_file"]
    if flipped:
        assert [loc["file"] for loc in corrupt[0]["locations"]] == [str(files[0])]
        assert len(wide) == 1
    else:
        assert not corrupt
        assert len(wide) == 2


@pytest.mark.parametrize("dtype", [pl.Int64(), pl.Int128()], ids=str)
def test_a_corrupt_token_file_is_reported_while_other_rows_are_fetched(
    tmp_path: Path, dtype: pl.DataType
) -> None:
    """Responses that need a look at their token rows (a bad log-prob, a repeated
    position) are fetched by Polars from the token files: a file whose page
    header is corrupted failed that read, and ``validate`` with it ("cannot read
    stage log source ...: Invalid thrift", the file unnamed; for 128-bit ids
    another file blamed), where the report names it. Both executors."""
    tokens, rewards = _faulty_long()
    sources = _sources(tokens.cast({"prompt": dtype}), rewards, tmp_path / "w")
    files = sorted((tmp_path / "w" / "t").glob("*.parquet"))
    data = bytearray(files[0].read_bytes())
    data[40:56] = bytes(b ^ 0xFF for b in data[40:56])  # the first page's header
    files[0].write_bytes(bytes(data))
    report = _both(**sources)
    corrupt = [p for p in report["problems"] if p["kind"] == "corrupt_file"]
    assert [loc["file"] for loc in corrupt[0]["locations"]] == [str(files[0])]
    assert "bad_logprob_unselected" in _counts(report)  # the other file's rows, looked at
