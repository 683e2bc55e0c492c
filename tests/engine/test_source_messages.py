"""The messages of sources Polars cannot read: a JSON lines file names its first
offending line (and the key, and what is wrong there), a Hive key given twice
names its directories, a loop of symbolic links says so."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pytest

import raft_polars
from raft_polars import RaftInputError


def _row(prompt: int, cand: int, **changed: object) -> str:
    row: dict[str, object] = {
        "stage": 0,
        "prompt": prompt,
        "cand": cand,
        "reward": 0.5,
        "logprobs": [-1.0],
    }
    row.update(changed)
    return json.dumps(row)


def _lines(count: int) -> list[str]:
    return [_row(p, c) for p in range(count // 2) for c in range(2)]


def _with(at: int, line: str, count: int = 10) -> bytes:
    """``count`` good lines with line ``at`` (1-based) replaced by ``line``."""
    rows = _lines(count)
    rows[at - 1] = line
    return ("\n".join(rows) + "\n").encode()


PRETTY = "\n".join(json.dumps(json.loads(r), indent=2) for r in _lines(4)).encode()
LATIN1 = ("\n".join(_lines(4)[:3]) + "\n").encode() + (
    b'{"stage":0,"prompt":"caf\xe9","cand":0,"reward":0.1,"logprobs":[-1.0]}\n'
)

# name, file bytes, what the message says
CASES = [
    (
        "nan",
        _with(5000, _row(9999, 0, reward=float("nan")), count=6000),
        "line 5000, key 'reward': NaN is not JSON (write null, or a number)",
    ),
    (
        "infinity-in-list",
        _with(3, _row(1, 0, logprobs=[-1.0, float("-inf")])),
        "line 3, key 'logprobs', in a list: -Infinity is not JSON",
    ),
    (
        "scalar-logprobs",
        _with(7, _row(9, 0, logprobs=-1.0)),
        "line 7, key 'logprobs': a number where earlier lines hold a list",
    ),
    (
        "list-prompt",
        _with(5, _row(0, 0).replace('"prompt": 0', '"prompt": [1]')),
        "line 5, key 'prompt': a list where earlier lines hold a number",
    ),
    (
        "boolean-reward",
        _with(2, _row(0, 1, reward=True)),
        "line 2, key 'reward': a boolean (true or false) where earlier lines hold a number",
    ),
    (
        "nested-field",
        b'{"stage":0,"prompt":0,"cand":0,"reward":1,"logprobs":[-1],"meta":{"a":1}}\n'
        b'{"stage":0,"prompt":0,"cand":1,"reward":1,"logprobs":[-1],"meta":{"a":[1]}}\n',
        "line 2, key 'meta', field 'a': a list where earlier lines hold a number",
    ),
    (
        "text-then-nan",  # a string beside numbers is read as text, not the culprit
        _with(9, _row(4, 0, reward=float("nan"))).replace(
            b'"prompt": 1, "cand": 0, "reward": 0.5', b'"prompt": 1, "cand": 0, "reward": "x"'
        ),
        "line 9, key 'reward': NaN is not JSON",
    ),
    (
        "inside-text",  # a list of lists inside a value read as text: not the culprit
        _with(4, _row(1, 1, logprobs=float("nan")))
        .replace(
            b'"cand": 1, "reward": 0.5, "logprobs": [-1.0]',
            b'"cand": 1, "reward": 0.5, "logprobs": "x"',
            1,
        )
        .replace(
            b'"prompt": 1, "cand": 0, "reward": 0.5, "logprobs": [-1.0]',
            b'"prompt": 1, "cand": 0, "reward": 0.5, "logprobs": [[-1.0]]',
        ),
        "line 4, key 'logprobs': NaN is not JSON",
    ),
    ("latin-1", LATIN1, "line 4 is not UTF-8: byte 0xe9"),
    ("pretty", PRETTY, "line 1 is not one JSON object per line: the object spans several lines"),
    (
        "no-newline",
        _with(6, _row(2, 1) + _row(3, 0)),
        "line 6 is not one JSON object per line: another JSON value follows",
    ),
    ("not-an-object", _with(4, "null"), "line 4 holds null, not a JSON object"),
    ("cut-off", _with(10, _row(4, 1)[:30]), "line 10, the last, ends inside its JSON object"),
]


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("packed", ["", ".gz", ".zst"])
def test_a_json_lines_error_names_the_line(
    tmp_path: Path, content: bytes, expected: str, packed: str
) -> None:
    """A JSON lines file Polars fails to read is an error that names the file,
    its first offending line and what is wrong there, compressed or not."""
    path = tmp_path / f"log.jsonl{packed}"
    if packed == ".zst":
        with pa.output_stream(str(path), compression="zstd") as out:
            out.write(content)
    else:
        path.write_bytes(gzip.compress(content) if packed else content)
    with pytest.raises(RaftInputError) as caught:
        raft_polars.stage_losses(path)
    message = str(caught.value)
    assert f"log.jsonl{packed}" in message
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b"trailing\n", "after line 3: its gzip data is followed by bytes that are not gzip"),
        (None, "after line 3: its gzip data is cut off"),
    ],
    ids=["trailing-garbage", "cut-off"],
)
def test_a_broken_gzip_file_names_the_last_line_read(
    tmp_path: Path, tail: bytes | None, expected: str
) -> None:
    """Bytes after the gzip data, or gzip data cut short, are named with the
    last line before them; a file of several gzip members (``cat a.gz b.gz``)
    is read whole."""
    rows = _lines(6)
    first = gzip.compress(("\n".join(rows[:3]) + "\n").encode())
    second = gzip.compress(("\n".join(rows[3:]) + "\n").encode())
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(first + (tail if tail is not None else second[: len(second) // 2]))
    with pytest.raises(RaftInputError, match=re.escape(expected)):
        raft_polars.stage_losses(path)
    path.write_bytes(first + second)
    assert len(raft_polars.stage_losses(path)) == 1


def test_a_hive_key_given_twice_names_the_directories(tmp_path: Path) -> None:
    """``stage=1/stage=2/``: the error names both directories and the key (it was
    Polars' internal message of a duplicate column)."""
    part = tmp_path / "stage=1" / "stage=2"
    part.mkdir(parents=True)
    (part / "p.jsonl").write_text(_row(0, 0) + "\n")
    with pytest.raises(RaftInputError, match=r"'stage=1' and 'stage=2' give the Hive key 'stage'"):
        raft_polars.stage_losses(tmp_path)


def test_a_loop_of_links_is_not_file_not_found(tmp_path: Path) -> None:
    """A link that leads back to itself says so; a link to nothing names its
    target."""
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    with pytest.raises(RaftInputError, match=r"'.*l1' is a loop of symbolic links"):
        raft_polars.stage_losses(tmp_path / "l1")
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    with pytest.raises(RaftInputError, match=r"a symbolic link to '.*nowhere\.jsonl'"):
        raft_polars.stage_losses(tmp_path / "dangling.jsonl")


@pytest.mark.parametrize(
    ("below", "expected"),
    [
        ("l1/log.jsonl", "'{d}/l1' is a loop of symbolic links"),
        ("l1/deeper/log.jsonl", "'{d}/l1' is a loop of symbolic links"),
        ("gone/log.jsonl", "'{d}/gone' is a symbolic link to '{d}/nowhere', which does not"),
        ("file.jsonl/log.jsonl", "('{d}/file.jsonl' is a file, not a directory)"),
        ("no/log.jsonl", "file not found: '{d}/no/log.jsonl' (there is no directory '{d}/no')"),
        ("log.jsonl", "file not found: '{d}/log.jsonl'"),
    ],
)
def test_a_path_is_examined_at_its_first_failing_component(
    tmp_path: Path, below: str, expected: str
) -> None:
    """A loop of links, a link to nothing or a file in a parent directory of the
    path is named there (a parent's loop was "file not found"), by every entry
    point."""
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file.jsonl").write_text(_row(0, 0) + "\n")
    for run in (raft_polars.stage_losses, raft_polars.validate, raft_polars.select_best):
        with pytest.raises(RaftInputError, match=re.escape(expected.format(d=tmp_path))):
            run(tmp_path / below)


@pytest.mark.parametrize("value", ["1.0", "abc", "99999999999999999999"])
def test_a_hive_key_read_as_text_names_its_directory(tmp_path: Path, value: str) -> None:
    """A stage directory whose value is not a 64-bit integer makes the key text;
    the type error names that directory and its file, not only the column."""
    for stage in ("0", value):
        part = tmp_path / f"stage={stage}"
        part.mkdir()
        (part / "p.jsonl").write_text(_row(0, 0).replace('"stage": 0, ', "") + "\n")
    pattern = rf"column 'stage' must be an integer, found text: the directory 'stage={value}' of "
    with pytest.raises(RaftInputError, match=re.escape(pattern)) as caught:
        raft_polars.stage_losses(tmp_path)
    assert f"stage={value}{os.sep}p.jsonl" in str(caught.value)


def test_an_id_beyond_int64_is_worded_alike_by_every_entry_point(tmp_path: Path) -> None:
    """An id of 20 digits: validate said 'cannot read stage log' where the
    others say the ids must fit a 64-bit signed integer."""
    path = tmp_path / "log.jsonl"
    path.write_text(
        _row(0, 0) + "\n" + _row(0, 0).replace('"cand": 0', '"cand": 18446744073709551615') + "\n"
    )
    messages = []
    for call in (raft_polars.stage_losses, raft_polars.validate, raft_polars.stage_stats):
        with pytest.raises(RaftInputError) as caught:
            call(path)
        messages.append(str(caught.value))
    assert all("the ids must fit a 64-bit signed integer" in m for m in messages), messages
    assert all("'cand'" in m for m in messages), messages


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"stage": 0, "prompt": "a\tb", "cand": 0}', "Invalid control character at character 26"),
        ('      {"stage": 0, "prompt": 0, "cand": 0,}', "at character 43"),
        ('{"stage": 0, "prompt": 0, "cand": 0, "reward": 1e400, "logprobs": [-1.0]}',
         "line 3, key 'reward': a number beyond the range of a 64-bit float"),
    ],
    ids=["control-character", "indented", "beyond-float"],
)  # fmt: skip
def test_the_position_and_the_value_are_named_exactly(
    tmp_path: Path, line: str, expected: str
) -> None:
    """The character counts from the line's start (leading spaces included),
    Python's "... at" is not doubled, and a number beyond float64 (Python's
    json reads inf) is named where Polars gave no line."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(_with(3, line))
    with pytest.raises(RaftInputError, match=re.escape(expected)) as caught:
        raft_polars.stage_losses(path)
    assert " at at " not in str(caught.value)


def test_the_failing_part_is_found_before_the_lines_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of parts that each parse alone but one, only that one is streamed through
    Python's json (the error path read every good part before it: 1.5 s each
    52 MB part)."""
    from raft_polars._engine import sources

    for part in range(4):
        (tmp_path / f"part-{part}.jsonl").write_bytes(_with(1, _row(0, 0), count=40))
    (tmp_path / "part-4.jsonl").write_bytes(_with(6, _row(2, 1, reward=True), count=40))
    streamed: list[str] = []
    first_bad_line = sources._first_bad_line

    def counted(path: str) -> str | None:
        streamed.append(Path(path).name)
        return first_bad_line(path)

    monkeypatch.setattr(sources, "_first_bad_line", counted)
    with pytest.raises(RaftInputError, match=r"part-4\.jsonl', line 6, key 'reward': a boolean"):
        raft_polars.stage_losses(tmp_path)
    assert streamed == ["part-4.jsonl"]


@pytest.mark.parametrize(
    ("name", "before"),
    [("part-0.jsonl", b""), ("part-0.jsonl", b"\n \n"), ("part-0.jsonl.gz", gzip.compress(b""))],
    ids=["empty", "blank-lines", "empty-gzip"],
)
def test_a_part_without_rows_before_the_bad_one_does_not_stop_the_search(
    tmp_path: Path, name: str, before: bytes
) -> None:
    """A part holding no rows (read as none) is passed over: the part after it
    whose values fail is still named, with its line (the search stopped at the
    empty part and the message named neither file nor line)."""
    (tmp_path / name).write_bytes(before)
    (tmp_path / "part-1.jsonl").write_bytes(_with(7, _row(3, 0, reward=True), count=12))
    expected = "part-1.jsonl', line 7, key 'reward': a boolean (true or false)"
    for run in (raft_polars.stage_losses, raft_polars.validate):
        with pytest.raises(RaftInputError, match=re.escape(expected)):
            run(tmp_path)


def _not_sources() -> list[tuple[object, str]]:
    import polars as pl

    pd = pytest.importorskip("pandas")  # installed with datasets, a test dependency

    frame = pl.DataFrame(
        {"stage": [0], "prompt": [0], "cand": [0], "reward": [1.0], "logprobs": [[-1.0]]}
    )
    return [
        (
            pd.DataFrame({"stage": [0]}),
            r"got pandas\S*\.DataFrame \(convert it with polars\.from_pandas",
        ),
        (frame.to_arrow().to_batches()[0], r"got pyarrow\S*\.RecordBatch \(make it a table"),
        ([frame], r"got builtins\.list \(a list of paths holds only str or pathlib\.Path\)"),
        ({"source": "log.parquet"}, r"got builtins\.dict$"),
    ]


@pytest.mark.parametrize("entry", ["stage_losses", "stage_stats", "select_best", "validate"])
def test_a_source_of_another_type_is_named_with_its_module(entry: str) -> None:
    """A source that is not one (a pandas frame, a record batch, a list holding a
    frame) is named by module and type, with how to make it one: "got
    DataFrame" read as a polars frame refused."""
    for source, message in _not_sources():
        with pytest.raises(RaftInputError, match=message):
            getattr(raft_polars, entry)(source)


@pytest.mark.parametrize("layout", ["nested", "long"])
@pytest.mark.parametrize("entry", ["stage_losses", "stage_stats", "select_best"])
def test_a_page_polars_cannot_decode_names_its_file(
    tmp_path: Path, layout: str, entry: str
) -> None:
    """A page header corrupted in one of several files, under a sound footer:
    the error named the source ("cannot read stage log source ...: Invalid
    thrift"), not the file; now the file that fails alone with the same error."""
    import polars as pl

    rows = 3000
    frame = pl.DataFrame(
        {
            "stage": [0] * rows,
            "prompt": list(range(rows)),
            "cand": [0] * rows,
            "reward": [0.5] * rows,
            "logprobs": [[-1.0, -2.0]] * rows,
        }
    )
    kwargs: dict[str, object] = {}
    if layout == "long":
        frame, rewards = (
            frame.drop("reward").explode("logprobs").rename({"logprobs": "logprob"}),
            frame.drop("logprobs"),
        )
        kwargs["rewards"] = rewards
    paths = []
    for part in range(3):
        path = tmp_path / f"part-{part}.parquet"
        frame.filter(pl.col("prompt") % 3 == part).write_parquet(path)
        paths.append(path)
    data = bytearray(paths[1].read_bytes())
    data[40:56] = bytes(b ^ 0xFF for b in data[40:56])  # the first page's header
    paths[1].write_bytes(bytes(data))

    def call() -> object:
        result = getattr(raft_polars, entry)(str(tmp_path), **kwargs)
        return raft_polars.collect(result) if entry == "select_best" else result

    named = f"cannot read Parquet file {re.escape(repr(str(paths[1])))}"
    with pytest.raises(RaftInputError, match=named):
        call()
