"""validate's strict read of dictionary-encoded text ids: the token pass compares
their codes and decodes the ids of the runs alone. Against the same rows handed
over as text (the kernel), and against the report of the same log with integer
ids, written by pyarrow in the ways writers write text (the whole call)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import long_frames, report_places
from strategies import ragged_logs

import raft_polars as rp
from raft_polars._engine import validate as vk

_TYPES: dict[str, pl.DataType] = {
    "stage": pl.Int32(), "prompt": pl.String(), "cand": pl.Int16(),
    "token": pl.Int32(), "logprob": pl.Float32(),
}  # fmt: skip

_ROW = st.tuples(
    st.integers(0, 1),
    st.sampled_from(["a", "b", "c", "ab"]),
    st.integers(0, 2),
    st.integers(0, 3),
    st.sampled_from([-1.0, -0.5, 0.5, float("nan")]),
)


def _batch(rows: list[tuple[Any, ...]], dictionary: list[str]) -> pa.RecordBatch:
    """The rows as a record batch, prompt ids dictionary-encoded over ``dictionary``."""
    stage, prompt, cand, token, logprob = (list(c) for c in zip(*rows, strict=True))
    first = {text: at for at, text in reversed(list(enumerate(dictionary)))}
    codes = pa.array([first[p] for p in prompt], pa.int32())
    return pa.RecordBatch.from_arrays(
        [
            pa.array(stage, pa.int32()),
            pa.DictionaryArray.from_arrays(codes, pa.array(dictionary)),
            pa.array(cand, pa.int16()),
            pa.array(token, pa.int32()),
            pa.array(logprob, pa.float32()),
        ],
        names=list(_TYPES),
    )


def _plain(batch: pa.RecordBatch) -> pl.DataFrame:
    frame = pl.from_arrow(batch.set_column(1, "prompt", batch.column(1).cast(pa.string())))
    assert isinstance(frame, pl.DataFrame)
    return frame.cast(pl.Schema(_TYPES))


def _runs(cuts: list[vk._Cut]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    runs = vk.token_runs(cuts, has_position=True)
    every = runs.every.sort(["stage", "prompt", "cand"])
    other = runs.other.sort(["stage", "prompt", "cand"])
    return every.rows(), other.rows()


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(_ROW, min_size=1, max_size=12), min_size=1, max_size=4),
    repeat=st.booleans(),
    extra=st.booleans(),
)
def test_coded_batches_cut_as_their_text(
    batches: list[list[tuple[Any, ...]]], repeat: bool, extra: bool
) -> None:
    """Batches of token rows with dictionary-encoded prompt ids (a dictionary in
    another order per batch, with values no row uses, or with a value twice, which
    must not be taken as codes) give the runs their text gives, runs going on from
    batch to batch."""
    coded, plain = [], []
    for at, rows in enumerate(batches):
        used = sorted({r[1] for r in rows}, reverse=at % 2 == 1)
        dictionary = [*used, *(["zz", "yy"] if extra else [])]
        if repeat and at == 0:
            dictionary = [*used, used[0]]  # a value twice: decoded, not coded
        batch = _batch(rows, dictionary)
        wanted, texts = vk._plain_batch(batch, _TYPES, coded=True)
        frame = pl.from_arrow(wanted)
        assert isinstance(frame, pl.DataFrame)
        if repeat and at == 0:
            assert not texts
            assert frame.schema["prompt"] == pl.String
        else:
            assert list(texts) == ["prompt"]
            assert frame.schema["prompt"].is_integer()
        coded.append(vk._Coded(frame, texts) if texts else frame.cast(pl.Schema(_TYPES)))
        plain.append(_plain(batch))
    want = _runs([vk._cut([f], has_position=True) for f in plain])
    got = _runs([vk._cut([f], has_position=True) for f in coded])
    assert got == want
    # every batch in one cut, as a unit of the strict read hands them over
    assert _runs([vk._cut(coded, has_position=True)]) == want


def test_null_text_ids_are_decoded_not_coded() -> None:
    """A null prompt id (in the rows, or as a value of the dictionary) keeps the
    column as text, null where it was."""
    codes = pa.array([0, None, 1], pa.int32())
    for values in (pa.array(["a", "b"]), pa.array(["a", None])):
        batch = pa.RecordBatch.from_arrays(
            [pa.DictionaryArray.from_arrays(codes, values)], names=["prompt"]
        )
        wanted, texts = vk._plain_batch(batch, {"prompt": pl.String()}, coded=True)
        assert not texts
        assert wanted.column(0).to_pylist() == ["a", None, values[1].as_py()]


def _write(frame: pl.DataFrame, path: Path, how: str) -> None:
    """``frame`` written by pyarrow as writers write text ids."""
    table = frame.to_arrow()
    options: dict[str, Any] = {"row_group_size": 5, "compression": "snappy"}
    if how == "plain":
        options["use_dictionary"] = False
    elif how == "small_pages":  # the dictionary and many data pages a chunk
        options["data_page_size"] = 16
    elif how == "arrow_dictionary":  # the file's own type is a dictionary
        name = next(n for n in ("prompt", "prompt_id") if n in table.column_names)
        at = table.schema.get_field_index(name)
        table = table.set_column(at, name, table.column(name).dictionary_encode())
    pq.write_table(table, path, **options)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    log=ragged_logs(max_stages=2),
    how=st.sampled_from(["dictionary", "plain", "small_pages", "arrow_dictionary"]),
    shuffle=st.integers(0, 50),
    copy=st.integers(0, 50),
    unit=st.sampled_from([1, 7, 1 << 19]),
    renamed=st.booleans(),
)
def test_text_ids_written_by_pyarrow_same_report_as_integers(
    *, log: tuple[list[Any], list[Any]], how: str, shuffle: int, copy: int, unit: int, renamed: bool
) -> None:
    """A log with text prompt ids, a repeated token row and rows out of order,
    written by pyarrow with dictionaries, without, with a dictionary and many small
    pages, and as an Arrow dictionary column, read a row group or more at a time,
    under its own column names or under others (``columns=``): the report of the
    same log with integer ids. Dictionary-encoded text reaches the cut as codes."""
    lps, rws = log
    tokens, rewards = long_frames(lps, rws, shuffle=shuffle)
    if tokens.height:
        tokens = pl.concat([tokens, tokens.slice(copy % tokens.height, 1)])
    names = {p: f"prompt-{p:03d}" for p in range(max(len(s) for s in rws) + 1)}
    back = {v: k for k, v in names.items()}

    def text(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.col("prompt").replace_strict(names, return_dtype=pl.String))

    theirs = {"prompt": "prompt_id", "cand": "sample"} if renamed else {}
    cut = vk._cut
    coded: list[int] = []  # batches handed over as codes

    def counted(frames: Any, **kwargs: Any) -> Any:
        coded.extend(1 for f in frames if isinstance(f, vk._Coded))
        return cut(frames, **kwargs)

    reports = []
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(vk, "_UNIT_ROWS", unit)
        patch.setattr(vk, "_cut", counted)
        for named in (False, True):
            root = Path(tmp) / str(named)
            (root / "t").mkdir(parents=True)
            files = ((tokens, root / "t" / "part.parquet"), (rewards, root / "r.parquet"))
            for frame, path in files:
                _write((text(frame) if named else frame).rename(theirs), path, how)
            got = rp.validate(
                str(root / "t"), rewards=str(root / "r.parquet"), limit=1000, columns=theirs or None
            )
            reports.append(got.to_dict())
    if how in ("dictionary", "small_pages") and tokens.height:
        assert coded
    if how in ("plain", "arrow_dictionary"):  # text, or Categorical ids: never coded
        assert not coded
    ints, texts = reports
    assert texts["summary"] == ints["summary"]
    assert texts["ok"] == ints["ok"]

    assert report_places(texts, back) == report_places(ints)


def test_dictionary_checked_before_its_codes_are_used(tmp_path: Path) -> None:
    """A dictionary value that is not UTF-8 is the file's finding: the codes are
    never compared in its place."""
    values = pa.array([b"p0", b"p\xff"], pa.binary()).cast(pa.string(), safe=False)
    prompt = pa.DictionaryArray.from_arrays(pa.array([0, 0, 1], pa.int32()), values)
    table = pa.table({
        "stage": pa.array([0, 0, 0], pa.int32()), "prompt": prompt,
        "cand": pa.array([0, 0, 0], pa.int32()), "token": pa.array([0, 1, 0], pa.int32()),
        "logprob": pa.array([-1.0, -1.0, -1.0], pa.float32()),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "t.parquet")
    pl.DataFrame({"stage": [0], "prompt": ["p0"], "cand": [0], "reward": [1.0]}).write_parquet(
        tmp_path / "r.parquet"
    )
    report = rp.validate(str(tmp_path / "t.parquet"), rewards=str(tmp_path / "r.parquet"))
    kinds = {p["kind"] for p in report.to_dict()["problems"]}
    assert "corrupt_file" in kinds
    assert not report.ok
    assert np.isfinite(report.to_dict()["summary"]["candidates"])


@pytest.mark.parametrize("index", [-1, 2, 7])
def test_a_dictionary_index_outside_it_is_refused(index: int) -> None:
    """An index outside its dictionary (below or beyond it, next to nulls) is the
    strict read's error, named with the column; indices within it pass."""
    values = pa.array(["a", "b"])

    def table(indices: list[int | None]) -> pa.Table:
        coded = pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), values, safe=False)
        return pa.table({"prompt": pa.chunked_array([coded.slice(0, 1), coded])})

    vk._valid_dictionaries(table([0, None, 1]))
    with pytest.raises(ValueError, match=f"'prompt' holds index {index} of a dictionary of 2"):
        vk._valid_dictionaries(table([0, None, index, 1]))


def test_a_dictionary_page_holding_a_value_twice_is_sound(tmp_path: Path) -> None:
    """A dictionary page with one value twice (the format allows it; made here by
    rewriting one value's bytes into another's): pyarrow's dictionary read keeps
    one copy and indices beyond it, so the unit is read again string by string.
    The file is sound, with the rows' own text, as Polars reads it."""
    rows = [("p-A", 0), ("p-B", 1), ("p-A", 2), ("p-B", 3)]
    tokens = pa.table({
        "stage": pa.array([0] * 4, pa.int32()), "prompt": [p for p, _ in rows],
        "cand": pa.array([0] * 4, pa.int32()), "token": pa.array([t for _, t in rows], pa.int32()),
        "logprob": pa.array([-0.5] * 4, pa.float32()),
    })  # fmt: skip
    path = tmp_path / "t.parquet"
    pq.write_table(tokens, path, compression="none", write_statistics=False)
    data = path.read_bytes()
    assert data.count(b"p-B") == 1  # in the dictionary page alone
    path.write_bytes(data.replace(b"p-B", b"p-A"))
    read = pq.ParquetFile(path, read_dictionary=["prompt"]).read().column("prompt").chunk(0)
    assert len(read.dictionary) == 1
    assert read.indices.to_pylist() == [0, 1, 0, 1]  # what the retry is for
    pl.DataFrame({"stage": [0], "prompt": ["p-A"], "cand": [0], "reward": [1.0]}).write_parquet(
        tmp_path / "r.parquet"
    )
    report = rp.validate(str(path), rewards=str(tmp_path / "r.parquet")).to_dict()
    assert report["ok"], report["problems"]
    assert report["summary"]["tokens"] == 4
    assert pl.read_parquet(path)["prompt"].to_list() == ["p-A"] * 4
