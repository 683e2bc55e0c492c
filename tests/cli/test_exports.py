"""``raft-polars select --format``: the trainer formats, cell by cell against a plain
reference (loops over the nested lists), on both layouts, both file formats, integer and
string prompt ids and both executors; then ``datasets`` and TRL reading the exports."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any

import cli_helpers
import dask_cluster
import polars as pl
import pytest
from cli_helpers import (
    Log,
    LogFiles,
    assert_one_line_error,
    read_output,
    reference_strategy,
    run,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import raft_polars as rp
from raft_polars._export import ExportFormat
from raft_polars.errors import RaftInputError

# the fixtures shared by the CLI tests (see cli_helpers)
any_log_files = cli_helpers.any_log_files
log_files = cli_helpers.log_files
out_dir = cli_helpers.out_dir
string_log_files = cli_helpers.string_log_files

LAYOUTS = ("nested", "long")
SUFFIXES = (".parquet", ".jsonl")
FORMATS = ("rows", "sft", "chat", "dpo", "openrlhf", "wide")
# the names trainers read: an id column must not take one of them
TRAINER_KEYS = {
    "prompt",
    "completion",
    "messages",
    "chosen",
    "rejected",
    "input",
    "output",
    "reward",
    "text",
    "label",
}


# --- the plain reference ------------------------------------------------------------------


def reference(
    log: Log,
    fmt: str,
    *,
    strategy: str = "best",
    n: int = 1,
    min_reward: float | None = None,
    stage: int | None = None,
    min_margin: float | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """The rows of ``fmt`` (in file order), and the prompts ``dpo`` skips for equal
    rewards and for ``min_margin``; loops over ``log``'s nested lists."""
    picked, _ = reference_strategy(log, strategy=strategy, n=n, min_reward=min_reward)
    position = {
        log.key(t, i, j): (t, i, j)
        for t, s in enumerate(log.rws)
        for i, p in enumerate(s)
        for j in range(len(p))
    }
    if stage is not None:
        picked = [k for k in picked if k[0] == stage]
    rows: list[dict[str, Any]] = []
    for key in picked:
        t, i, j = position[key]
        text = log.payload(key)
        reward = log.rws[t][i][j]
        tokens = len(log.lps[t][i][j])
        ids = {"stage": key[0], "prompt_id": key[1], "cand": key[2]}
        if fmt == "rows":
            rows.append({**ids, "reward": reward, "tokens": tokens, **text})
        elif fmt == "sft":
            rows.append(
                {
                    "prompt": text["prompt_text"],
                    "completion": text["response"],
                    **ids,
                    "cand_reward": reward,
                    "tokens": tokens,
                }
            )
        elif fmt == "chat":
            messages = [
                {"role": "user", "content": text["prompt_text"]},
                {"role": "assistant", "content": text["response"]},
            ]
            rows.append({"messages": messages, **ids, "cand_reward": reward, "tokens": tokens})
        elif fmt == "openrlhf":
            rows.append(
                {
                    "input": text["prompt_text"],
                    "output": text["response"],
                    "reward": reward,
                    **ids,
                    "tokens": tokens,
                }
            )
    if fmt in ("rows", "sft", "chat", "openrlhf"):
        return rows, 0, 0
    equal = closer = 0
    for t, s in enumerate(log.rws):
        if stage is not None and log.stage_ids[t] != stage:
            continue
        for i, rewards in enumerate(s):
            mine = sorted(k[2] for k in picked if k[:2] == log.key(t, i, 0)[:2])
            sid, pid = log.stage_ids[t], log.prompt_ids[i]
            if fmt == "wide":
                rows.append(
                    {
                        "stage": sid,
                        "prompt_id": pid,
                        "selected_cands": mine,
                        "selected_rewards": [rewards[j] for j in mine],
                        "selected_tokens": [len(log.lps[t][i][j]) for j in mine],
                        "cands": list(range(len(rewards))),
                        "rewards": list(rewards),
                    }
                )
                continue
            if not mine:
                continue
            best = min(mine, key=lambda j: (-rewards[j], j))
            worst = min(range(len(rewards)), key=lambda j: (rewards[j], j))
            if rewards[best] == rewards[worst]:
                equal += 1
                continue
            if min_margin is not None and rewards[best] - rewards[worst] < min_margin:
                closer += 1
                continue
            rows.append(
                {
                    "prompt": log.payload(log.key(t, i, best))["prompt_text"],
                    "chosen": log.payload(log.key(t, i, best))["response"],
                    "rejected": log.payload(log.key(t, i, worst))["response"],
                    "chosen_reward": rewards[best],
                    "rejected_reward": rewards[worst],
                    "stage": sid,
                    "prompt_id": pid,
                    "chosen_cand": best,
                    "rejected_cand": worst,
                }
            )
    rows.sort(key=lambda r: (r["stage"], r["prompt_id"]))
    return rows, equal, closer


def assert_rows(got: pl.DataFrame, want: list[dict[str, Any]]) -> None:
    """Same columns in the same order, the same rows (floats exact)."""
    if want:
        assert got.columns == list(want[0])
    assert got.to_dicts() == want


# --- every format against the reference ------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_format_against_reference(
    capsys: pytest.CaptureFixture[str],
    out_dir: Path,
    *,
    any_log_files: LogFiles,
    fmt: str,
    layout: str,
    suffix: str,
) -> None:
    files = any_log_files
    out = out_dir / f"export{suffix}"
    result = run(capsys, "select", *files.args(layout), "-o", out, "--format", fmt)
    assert result.code == 0, result.err
    assert result.err == ""
    want, equal, _ = reference(files.log, fmt)
    frame = read_output(out)
    assert_rows(frame, want)
    noun = {"dpo": "preference pair(s)", "wide": "prompt(s)"}.get(fmt, "selected response(s)")
    assert f"wrote {len(want)} {noun} to {out}" in result.out
    if fmt == "dpo":
        assert f"skipped {equal} prompt(s) whose best and worst rewards are equal" in result.out
    if fmt != "rows":  # the ids beside the text take no trainer's key
        ids = [c for c in frame.columns if c.endswith(("cand", "_id", "stage"))]
        assert "stage" in ids
        assert "prompt_id" in ids
        assert not TRAINER_KEYS & set(ids)
    assert sorted(p.name for p in out_dir.iterdir()) == [out.name]  # no temporary left


@pytest.mark.parametrize(
    "argv",
    [
        ["--strategy", "top_n", "--n", "2"],
        ["--min-reward", "0.5"],
        ["--last-stage"],
        ["--strategy", "top_n", "--n", "3", "--stage", "15"],
    ],
    ids=["top_n", "min_reward", "last_stage", "top_n_stage"],
)
@pytest.mark.parametrize("fmt", ["sft", "dpo", "wide"])
def test_formats_with_strategies_and_stages(
    capsys: pytest.CaptureFixture[str],
    out_dir: Path,
    string_log_files: LogFiles,
    fmt: str,
    argv: list[str],
) -> None:
    log = string_log_files.log
    opts = dict(zip(argv[::2], argv[1::2], strict=False))
    stage = log.stage_ids[-1] if "--last-stage" in argv else None
    if "--stage" in opts:
        stage = int(opts["--stage"])
    want, equal, _ = reference(
        log,
        fmt,
        strategy=opts.get("--strategy", "best"),
        n=int(opts.get("--n", 1)),
        min_reward=float(opts["--min-reward"]) if "--min-reward" in opts else None,
        stage=stage,
    )
    for layout in LAYOUTS:
        out = out_dir / f"{layout}.jsonl"
        result = run(
            capsys, "select", *string_log_files.args(layout), "-o", out, "--format", fmt, *argv
        )
        assert result.code == 0, result.err
        assert_rows(read_output(out), want)
        if fmt == "dpo":
            assert f"skipped {equal} prompt(s)" in result.out


# --- a small hand-made log -----------------------------------------------------------------

# stage 0: prompt 0 has a best (cand 1) and a tie for the worst (cands 2 and 3: 2 is
# rejected); prompt 1's rewards are all equal, prompt 2 has one candidate (both skipped);
# stage 1: margins 0.5 and 0.05
HAND_RWS = [[[0.5, 0.9, 0.1, 0.1], [0.3, 0.3], [1.0]], [[0.2, 0.7, 0.7], [0.0, 0.05]]]
HAND_LPS = [[[[-0.5] * (j + 1) for j in range(len(p))] for p in s] for s in HAND_RWS]


def _hand_log() -> Log:
    return Log(HAND_LPS, HAND_RWS, [0, 1], ["a", "b", "c"])


@pytest.fixture(scope="module")
def hand_files(tmp_path_factory: pytest.TempPathFactory) -> LogFiles:
    return _hand_log().write(tmp_path_factory.mktemp("hand"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hand_made_dpo_and_wide(
    capsys: pytest.CaptureFixture[str], out_dir: Path, hand_files: LogFiles, layout: str
) -> None:
    out = out_dir / "dpo.parquet"
    result = run(capsys, "select", *hand_files.args(layout), "-o", out, "--format", "dpo")
    assert result.code == 0, result.err
    dpo = read_output(out)
    assert dpo.select("stage", "prompt_id", "chosen_cand", "rejected_cand").rows() == [
        (0, "a", 1, 2),
        (1, "a", 1, 0),
        (1, "b", 1, 0),
    ]
    assert dpo["prompt"].to_list() == ["question a at stage 0"] + [
        f"question {p} at stage 1" for p in "ab"
    ]
    assert dpo["chosen"][0] == "answer 1 to a at stage 0"
    assert dpo["rejected"][0] == "answer 2 to a at stage 0"
    assert dpo.select("chosen_reward", "rejected_reward").rows() == [
        (0.9, 0.1),
        (0.7, 0.2),
        (0.05, 0.0),
    ]
    assert result.out.splitlines() == [
        f"wrote 3 preference pair(s) to {out}",
        "skipped 2 prompt(s) whose best and worst rewards are equal",
    ]
    # --min-margin 0.1 drops the 0.05 pair and says so
    out = out_dir / "dpo-margin.jsonl"
    result = run(
        capsys,
        "select",
        *hand_files.args(layout),
        "-o",
        out,
        "--format",
        "dpo",
        "--min-margin",
        "0.1",
    )
    assert result.code == 0, result.err
    assert read_output(out).select("stage", "prompt_id").rows() == [(0, "a"), (1, "a")]
    assert "skipped 1 pair(s) closer than --min-margin 0.1" in result.out
    out = out_dir / "wide.parquet"
    result = run(
        capsys, "select", *hand_files.args(layout), "-o", out, "--format", "wide", "--n", "2",
        "--strategy", "top_n", "--min-reward", "0.5",
    )  # fmt: skip
    assert result.code == 0, result.err
    wide = read_output(out)
    assert wide.columns == [
        "stage",
        "prompt_id",
        "selected_cands",
        "selected_rewards",
        "selected_tokens",
        "cands",
        "rewards",
    ]
    assert wide.select("prompt_id", "selected_cands", "selected_tokens", "cands").rows() == [
        ("a", [0, 1], [1, 2], [0, 1, 2, 3]),
        ("b", [], [], [0, 1]),  # nothing reaches 0.5: empty lists
        ("c", [0], [1], [0]),
        ("a", [1, 2], [2, 3], [0, 1, 2]),
        ("b", [], [], [0, 1]),
    ]
    assert wide["rewards"].to_list() == [r for s in HAND_RWS for r in s]
    assert f"wrote 5 prompt(s) to {out}" in result.out


def test_api_returns_counts(tmp_path: Path) -> None:
    frame = cli_helpers.with_payload(_hand_log().nested())
    written = rp.write_selected(frame, tmp_path / "p.jsonl", format="dpo", min_margin=0.1)
    assert written == 2
    assert (written.rows, written.format) == (2, "dpo")
    assert (written.skipped_equal, written.skipped_margin) == (2, 1)
    rows = rp.write_selected(frame, tmp_path / "r.parquet")
    assert (rows, rows.format, rows.skipped_equal) == (5, "rows", 0)


# --- the text columns --------------------------------------------------------------------


def test_text_columns_found_given_or_asked_for(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, out_dir: Path, hand_files: LogFiles
) -> None:
    base = pl.read_parquet(hand_files.nested)
    # a string prompt id is the prompt text when no payload column holds it
    bare = tmp_path / "bare.parquet"
    base.drop("prompt_text", "uid").rename({"response": "output"}).write_parquet(bare)
    result = run(capsys, "select", bare, "-o", out_dir / "a.parquet", "--format", "sft")
    assert result.code == 0, result.err
    sft = read_output(out_dir / "a.parquet")
    assert sft["prompt"].to_list() == sft["prompt_id"].to_list()
    assert sft["completion"][0] == "answer 1 to a at stage 0"
    # given columns win over the defaults
    result = run(
        capsys, "select", hand_files.nested, "-o", out_dir / "b.jsonl", "--format", "chat",
        "--prompt-column", "uid", "--response-column", "prompt_text",
    )  # fmt: skip
    assert result.code == 0, result.err
    messages = read_output(out_dir / "b.jsonl")["messages"][0].to_list()
    assert messages == [
        {"role": "user", "content": "0/a/1"},
        {"role": "assistant", "content": "question a at stage 0"},
    ]
    # integer prompt ids and no text column: the error names the columns and options
    ints = tmp_path / "ints.parquet"
    ids = pl.col("prompt").replace_strict({"a": 0, "b": 1, "c": 2}, return_dtype=pl.Int64)
    base.drop("prompt_text").with_columns(ids).rename({"uid": "notes"}).write_parquet(ints)
    result = run(capsys, "select", ints, "-o", out_dir / "c.parquet", "--format", "openrlhf")
    assert_one_line_error(result, "format 'openrlhf' needs the prompt text")
    assert "columns present: ['stage', 'prompt', 'cand', 'reward', 'tokens'" in result.err
    assert "name the column with --prompt-column COL" in result.err
    nothing = tmp_path / "nothing.parquet"
    base.drop("response").write_parquet(nothing)
    result = run(capsys, "select", nothing, "-o", out_dir / "d.parquet", "--format", "dpo")
    assert_one_line_error(result, "needs the response text")
    assert "--response-column COL" in result.err
    result = run(
        capsys, "select", hand_files.nested, "-o", out_dir / "e.parquet", "--format", "sft",
        "--response-column", "reward",
    )  # fmt: skip
    assert_one_line_error(result, "--response-column 'reward' is of type Float64, not text")
    result = run(
        capsys, "select", hand_files.nested, "-o", out_dir / "f.parquet", "--format", "sft",
        "--prompt-column", "question",
    )  # fmt: skip
    assert_one_line_error(result, "--prompt-column 'question': no such column")
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.parquet", "b.jsonl"]


def test_option_errors(
    capsys: pytest.CaptureFixture[str], out_dir: Path, hand_files: LogFiles
) -> None:
    args = [*hand_files.args("nested"), "-o", out_dir / "x.parquet"]
    result = run(capsys, "select", *args, "--format", "sft", "--min-margin", "0.1")
    assert_one_line_error(result, "--min-margin applies to --format dpo only, not 'sft'")
    for bad in ("-1", "nan", "inf"):
        result = run(capsys, "select", *args, "--format", "dpo", "--min-margin", bad)
        assert_one_line_error(result, "must be a finite number >= 0")
    result = run(capsys, "select", *args, "--format", "trl")
    assert_one_line_error(result, "invalid choice: 'trl'")
    with pytest.raises(RaftInputError, match="format='trl': must be one of rows, sft"):
        rp.write_selected(hand_files.nested, out_dir / "y.parquet", format="trl")  # type: ignore[arg-type]
    # the wide format writes no text: a text column given is refused, not ignored
    for option in ("--prompt-column", "--response-column"):
        result = run(capsys, "select", *args, "--format", "wide", option, "no_such_column")
        assert_one_line_error(
            result, "--prompt-column/--response-column apply to formats that write text"
        )
    out = out_dir / "z.parquet"
    with pytest.raises(RaftInputError, match="not format='wide'"):
        rp.write_selected(hand_files.nested, out, format="wide", prompt_column="question")
    with pytest.raises(RaftInputError, match="not format='wide'"):
        rp.write_selected(hand_files.nested, out, format="wide", response_column="response")
    assert not list(out_dir.iterdir())
    assert not any(out_dir.iterdir())


def test_prompt_id_payload_clash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, out_dir: Path, hand_files: LogFiles
) -> None:
    clash = tmp_path / "clash.parquet"
    pl.read_parquet(hand_files.nested).with_columns(pl.lit(1).alias("prompt_id")).write_parquet(
        clash
    )
    result = run(capsys, "select", clash, "-o", out_dir / "x.parquet")
    assert_one_line_error(result, "already has a column 'prompt_id'")
    # ... unless it is the prompt id itself, by --column
    own = tmp_path / "own.parquet"
    pl.read_parquet(hand_files.nested).rename({"prompt": "prompt_id"}).write_parquet(own)
    result = run(
        capsys, "select", own, "-o", out_dir / "y.parquet", "--column", "prompt=prompt_id",
        "--format", "sft",
    )  # fmt: skip
    assert result.code == 0, result.err
    sft = read_output(out_dir / "y.parquet")
    assert sft.columns[:4] == ["prompt", "completion", "stage", "prompt_id"]
    assert sft["prompt_id"].to_list() == ["a", "b", "c", "a", "b"]


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        ([float("nan"), float("inf"), -float("inf"), 1.0], 3),
        ([[1.0, float("nan")], [], None, [-float("inf")]], 2),
        ([{"x": float("inf"), "y": "a"}, {"x": 1.0, "y": None}, None, None], 1),
        ([1.5, None, -2.0, 0.0], 0),
    ],
)
def test_json_lines_refuse_floats_json_has_not(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, out_dir: Path, values: list[Any], bad: int
) -> None:
    column = "aux"
    # Polars' writer made NaN and infinities null, silently; Parquet keeps them
    log = pl.DataFrame(
        {
            "stage": [0, 0, 1, 1],
            "prompt": [0, 1, 0, 1],
            "cand": [0, 0, 0, 0],
            "reward": [0.5, 0.4, 0.3, 0.2],
            "logprobs": [[-1.0], [-0.5], [-0.25], [-2.0]],
            column: values,
        }
    )
    source = tmp_path / "log.parquet"
    log.write_parquet(source)
    rp.write_selected(source, out_dir / "kept.parquet")
    kept = pl.read_parquet(out_dir / "kept.parquet").sort("stage", "prompt_id")
    assert str(kept[column].to_list()) == str(log[column].to_list())  # str: NaN != NaN
    for target in (out_dir / "b.jsonl", out_dir / "c.jsonl"):
        if bad:
            if target.name == "b.jsonl":
                with pytest.raises(RaftInputError, match=rf"column\(s\) '{column}' \({bad}\)"):
                    rp.write_selected(source, target)
            else:
                result = run(capsys, "select", source, "-o", target)
                assert_one_line_error(result, "JSON has no NaN or infinite numbers")
            assert not target.exists()
        else:
            rp.write_selected(source, target)
            back = pl.read_ndjson(target).sort("stage", "prompt_id")
            assert back[column].to_list() == values
    assert sorted(p.name for p in out_dir.iterdir()) == (
        ["kept.parquet"] if bad else ["b.jsonl", "c.jsonl", "kept.parquet"]
    )


# --- null texts -------------------------------------------------------------------------

TEXT_ROLES = {
    "sft": ("prompt", "response"),
    "chat": ("prompt", "response"),
    "openrlhf": ("prompt", "response"),
    "dpo": ("prompt", "chosen response", "rejected response"),
}


def null_text_reference(
    rows: list[tuple[int, int, int, float, str | None, str | None]], fmt: str
) -> tuple[list[tuple[str | None, ...]], dict[str, list[tuple[int, int, int]]]]:
    """The (prompt, response, rejected) texts ``fmt`` writes, in order, and for
    each text role the (stage, prompt, cand) of its null texts; loops over
    ``rows`` of (stage, prompt, cand, reward, prompt text, response)."""
    groups: dict[tuple[int, int], list[tuple[int, float, str | None, str | None]]] = {}
    for stage, prompt, cand, reward, question, answer in rows:
        groups.setdefault((stage, prompt), []).append((cand, reward, question, answer))
    written: list[tuple[str | None, ...]] = []
    nulls: dict[str, list[tuple[int, int, int]]] = {role: [] for role in TEXT_ROLES[fmt]}
    for (stage, prompt), cands in sorted(groups.items()):
        best = min(cands, key=lambda c: (-c[1], c[0]))
        worst = min(cands, key=lambda c: (c[1], c[0]))
        if fmt == "dpo" and best[1] == worst[1]:
            continue
        texts = [best[2], best[3]] + ([worst[3]] if fmt == "dpo" else [])
        owners = [best[0], best[0]] + ([worst[0]] if fmt == "dpo" else [])
        for role, text, cand in zip(TEXT_ROLES[fmt], texts, owners, strict=True):
            if text is None:
                nulls[role].append((stage, prompt, cand))
        written.append((texts[0], texts[1], texts[2] if fmt == "dpo" else None))
    return written, nulls


@pytest.mark.parametrize(
    ("suffix", "engine"),
    [(".parquet", "polars"), (".jsonl", "polars"), (".parquet", "dask")],
)
@pytest.mark.parametrize("fmt", ["sft", "chat", "openrlhf", "dpo"])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_a_null_text_is_refused_where_it_would_be_written(
    tmp_path_factory: pytest.TempPathFactory,
    fmt: ExportFormat,
    suffix: str,
    engine: str,
    data: Any,
) -> None:
    """A format of text whose prompt or response (chosen or rejected) would be
    null is an error naming the text, its column and the first candidate (by
    stage, prompt, cand) holding it, with how many more, and writes nothing; a
    null text that is not written (an unselected candidate's) is no error."""
    text = st.one_of(st.none(), st.sampled_from(["Q", "", "é"]))
    shape = st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=3), min_size=1, max_size=2)
    rows = [
        (stage, prompt, cand, data.draw(st.sampled_from([0.0, 0.5, 1.0])), data.draw(text),
         data.draw(text))
        for stage, prompts in enumerate(data.draw(shape))
        for prompt, k in enumerate(prompts)
        for cand in range(k)
    ]  # fmt: skip
    log = pl.DataFrame(
        {
            "stage": [r[0] for r in rows],
            "prompt": [r[1] for r in rows],
            "cand": [r[2] for r in rows],
            "reward": [r[3] for r in rows],
            "logprobs": [[-1.0 - r[2]] for r in rows],
            "prompt_text": pl.Series([r[4] for r in rows], dtype=pl.String),
            "response": pl.Series([r[5] for r in rows], dtype=pl.String),
        }
    )
    out = tmp_path_factory.mktemp("null") / f"out{suffix}"
    chosen: Any = dask_cluster.engine() if engine == "dask" else engine
    written, nulls = null_text_reference(rows, fmt)
    first = next((role for role in TEXT_ROLES[fmt] if nulls[role]), None)
    if first is None:
        assert rp.write_selected(log, out, format=fmt, engine=chosen) == len(written)
        if not written:  # no pair: an empty file
            assert out.stat().st_size == 0 or read_output(out).is_empty()
            return
        got = read_output(out)
        texts = {
            "sft": ("prompt", "completion"),
            "openrlhf": ("input", "output"),
            "dpo": ("prompt", "chosen", "rejected"),
        }.get(fmt)
        if texts is None:  # chat: the messages' contents
            pairs = [(m[0]["content"], m[1]["content"], None) for m in got["messages"].to_list()]
        else:
            pairs = [(*row, None)[:3] for row in got.select(texts).rows()]
        assert pairs == written
        return
    stage, prompt, cand = nulls[first][0]
    column = "prompt_text" if first == "prompt" else "response"
    more = f" (and {len(nulls[first]) - 1} more)" if len(nulls[first]) > 1 else ";"
    want = (
        f"the {first} text (column {column!r}) is null at stage {stage}, prompt {prompt}, "
        f"cand {cand}{more}"
    )
    with pytest.raises(RaftInputError) as caught:
        rp.write_selected(log, out, format=fmt, engine=chosen)
    assert want in str(caught.value)
    assert str(out) in str(caught.value)
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_the_command_line_names_a_null_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``select --format sft`` on a log whose best candidate has no response text:
    one line, exit 2, no file."""
    log = pl.DataFrame(
        {"stage": [0, 0], "prompt": [5, 5], "cand": [0, 1], "reward": [0.1, 0.5],
         "logprobs": [[-1.0], [-2.0]], "prompt_text": ["Q", "Q"], "response": ["a", None]}
    )  # fmt: skip
    log.write_parquet(tmp_path / "log.parquet")
    out = tmp_path / "out" / "sft.jsonl"
    out.parent.mkdir()
    result = run(capsys, "select", tmp_path / "log.parquet", "-o", out, "--format", "sft")
    assert_one_line_error(result, "response text (column 'response') is null at stage 0, prompt 5")
    assert list(out.parent.iterdir()) == []
    rows = run(capsys, "select", tmp_path / "log.parquet", "-o", out, "--format", "rows")
    assert rows.code == 0, rows.err
    assert read_output(out)["response"].to_list() == [None]


# --- both executors ------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_dask_engine_writes_the_same(
    tmp_path: Path, log_files: LogFiles, fmt: ExportFormat, layout: str
) -> None:
    if layout == "nested":
        kwargs: dict[str, Any] = {"source": str(log_files.nested)}
    else:
        kwargs = {"source": str(log_files.tokens), "rewards": str(log_files.rewards)}
    margin = 0.25 if fmt == "dpo" else None
    stage = log_files.log.stage_ids[1]
    local = rp.write_selected(
        **kwargs, output=tmp_path / "local.parquet", format=fmt, stage=stage, min_margin=margin
    )
    remote = rp.write_selected(
        **kwargs,
        output=tmp_path / "dask.parquet",
        format=fmt,
        stage=stage,
        min_margin=margin,
        engine=dask_cluster.engine(),
    )
    want, equal, closer = reference(log_files.log, fmt, stage=stage, min_margin=margin)
    assert (remote, remote.skipped_equal, remote.skipped_margin) == (len(want), equal, closer)
    assert (local, local.skipped_equal, local.skipped_margin) == (len(want), equal, closer)
    assert_rows(pl.read_parquet(tmp_path / "dask.parquet"), want)
    assert pl.read_parquet(tmp_path / "local.parquet").equals(
        pl.read_parquet(tmp_path / "dask.parquet")
    )


# --- what reads the exports ------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("fmt", ["sft", "chat", "dpo", "openrlhf"])
def test_datasets_loads_the_exports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, log_files: LogFiles, fmt: str, suffix: str
) -> None:
    datasets = pytest.importorskip("datasets")
    out = tmp_path / f"export{suffix}"
    assert run(capsys, "select", *log_files.args("long"), "-o", out, "--format", fmt).code == 0
    builder = "parquet" if suffix == ".parquet" else "json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # datasets' own deprecations are not ours
        data = datasets.load_dataset(
            builder, data_files=str(out), split="train", cache_dir=str(tmp_path / "cache")
        )
    want, _, _ = reference(log_files.log, fmt)
    assert data.num_rows == len(want)
    assert data.column_names == list(want[0])
    first = data[0]
    for name, value in want[0].items():
        if isinstance(value, float):
            assert math.isclose(first[name], value)
        else:
            assert first[name] == value, name
    if fmt in ("sft", "dpo"):
        assert data.features["prompt"].dtype in ("string", "large_string")


# --- TRL trains on them (a tiny model made here: nothing is downloaded) ------------------


def _tiny_model(texts: list[str], directory: Path) -> tuple[Any, Any]:
    """A 1-layer GPT-2 and a word-level tokenizer trained on ``texts``."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<eos>"])
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    fast.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}<eos>{% endgeneration %}{% else %}{{ m['content'] }} "
        "{% endif %}{% endfor %}"
    )
    config = transformers.GPT2Config(
        vocab_size=len(fast),
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=fast.eos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = transformers.GPT2LMHeadModel(config)
    fast.save_pretrained(directory / "tokenizer")
    return model, fast


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")  # TRL, transformers and torch warn about their own
@pytest.mark.parametrize("fmt", ["sft", "chat", "dpo"])
def test_trl_trains_on_the_export(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, log_files: LogFiles, fmt: str
) -> None:
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    out = tmp_path / "export.jsonl"
    assert run(capsys, "select", *log_files.args("nested"), "-o", out, "--format", fmt).code == 0
    data = datasets.load_dataset(
        "json", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache")
    )
    texts = pl.read_parquet(log_files.nested).select("prompt_text", "response")
    model, tokenizer = _tiny_model(
        [*texts["prompt_text"], *texts["response"], "user assistant"], tmp_path
    )
    common: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "logging_steps": 1,
    }
    if fmt == "dpo":
        config = trl.DPOConfig(**common, max_length=48)
        trainer = trl.DPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),  # else TRL loads it by the model's (empty) name
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
        )
    else:
        config = trl.SFTConfig(**common, max_length=48)
        trainer = trl.SFTTrainer(
            model=model, args=config, train_dataset=data, processing_class=tokenizer
        )
    result = trainer.train()
    assert result.global_step == 1
    assert math.isfinite(result.training_loss)
