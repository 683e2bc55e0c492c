"""The packed keys of ``validate`` and the compiled loops that read them, against
plain Python over the same ids.

``_Box`` packs integer ids into one Int64 (mixed radix over their ranges);
``_runs.pack`` makes the keys an id at a time. ``increasing_ids``,
``distinct_sorted`` and ``member`` answer, without hash
tables, what sets and sorted lists answer here; ``_within`` and ``_per_candidate``
take the compiled way where the keys come sorted and Polars' otherwise, with the
same answer either way.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_polars._engine import _runs
from raft_polars._engine import validate as vk

_IDS = ["stage", "prompt", "cand"]

# ids of a few candidates: small ranges so that repeats and ties are common
_ROWS = st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 40), st.integers(0, 5)), max_size=60)
_TYPES = st.sampled_from([pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt32])


def _frame(rows: list[tuple[int, int, int]], types: list[Any]) -> pl.DataFrame:
    columns = list(zip(*rows, strict=True)) if rows else [(), (), ()]
    return pl.DataFrame(
        [pl.Series(c, list(v), dtype=t) for c, v, t in zip(_IDS, columns, types, strict=True)]
    )


@settings(max_examples=200, deadline=None)
@given(rows=_ROWS.filter(bool), data=st.data())
def test_keys_sort_as_the_ids_and_are_one_to_one(
    rows: list[tuple[int, int, int]], data: st.DataObject
) -> None:
    frame = _frame(rows, [pl.Int64, data.draw(_TYPES), pl.Int16])
    box = vk._Box.of(frame)
    assert box is not None
    keys = box.keys(frame).to_list()
    assert keys == frame.select(box.key()).to_series().to_list()  # compiled == expressions
    by_ids = {row: key for row, key in zip(rows, keys, strict=True)}
    assert len(set(by_ids.values())) == len(by_ids)  # one key an id triple
    ordered = sorted(by_ids)
    assert [by_ids[r] for r in ordered] == sorted(by_ids.values())  # the same order
    back = pl.DataFrame({"_key": keys}).select(box.ids()).rows()
    assert back == rows


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.integers(-50, 50), max_size=40))
def test_distinct_sorted(keys: list[int]) -> None:
    ordered = np.sort(np.array(keys, dtype=np.int64))
    assert _runs.distinct_sorted(ordered) == len(set(keys))


@settings(max_examples=200, deadline=None)
@given(rows=_ROWS, sort=st.booleans())
def test_increasing_ids_is_strict_lexicographic_order(
    rows: list[tuple[int, int, int]], sort: bool
) -> None:
    if sort:
        rows = sorted(set(rows))
    frame = _frame(rows, [pl.Int32, pl.Int64, pl.Int8])
    arrays = [frame.get_column(c).to_numpy() for c in _IDS]
    assert _runs.increasing_ids(*arrays) == all(a < b for a, b in itertools.pairwise(rows))


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.integers(0, 30), max_size=40),
    among=st.lists(st.integers(0, 30), max_size=40),
    sort=st.booleans(),
)
def test_within_is_membership(keys: list[int], among: list[int], sort: bool) -> None:
    if sort:  # the merge; else Polars' is_in
        keys, among = sorted(keys), sorted(among)
    got = vk._within(pl.Series("_key", keys, pl.Int64), pl.Series("_key", among, pl.Int64))
    assert got.to_list() == [k in set(among) for k in keys]
    out = np.empty(len(keys), dtype=np.bool_)
    ordered = sorted(keys)
    _runs.member(np.array(ordered, dtype=np.int64), np.array(sorted(among), dtype=np.int64), out)
    assert out.tolist() == [k in set(among) for k in ordered]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.integers(0, 6),
            st.integers(0, 3),
            st.one_of(st.none(), st.floats(-5, 5), st.just(float("nan"))),
        ),
        max_size=40,
    ),
    sort=st.booleans(),
)
def test_one_row_a_candidate_with_its_largest_sound_reward(
    rows: list[tuple[int, int, int, float | None]], sort: bool
) -> None:
    if sort:  # sorted and unique: the compiled way, nothing grouped
        rows = sorted({r[:3]: r for r in rows}.values(), key=lambda r: r[:3])
    cands = pl.DataFrame(
        rows, schema={**dict.fromkeys(_IDS, pl.Int64), "reward": pl.Float64}, orient="row"
    )
    got = vk._per_candidate(cands).sort(_IDS)
    expected: dict[tuple[int, int, int], list[Any]] = {}
    for stage, prompt, cand, reward in rows:
        held = expected.setdefault((stage, prompt, cand), [0, None])
        held[0] += 1
        if reward is not None and not math.isnan(reward):  # null and NaN are not sound
            held[1] = reward if held[1] is None else max(held[1], reward)
    assert got.select(*_IDS, "rows").rows() == [(*k, v[0]) for k, v in sorted(expected.items())]
    assert got["reward"].to_list() == [v[1] for _, v in sorted(expected.items())]


def test_within_a_null_key_is_one_of_none() -> None:
    keys = pl.Series("_key", [1, None, 3], pl.Int64)
    assert vk._within(keys, pl.Series("_key", [1, 3, None], pl.Int64)).to_list() == [
        True, False, True,
    ]  # fmt: skip


def test_token_rows_with_a_null_id_are_orphans(tmp_path: Any) -> None:
    """Their key is null, which no candidate has: the anti join kept them as
    orphans; the membership test must not drop them as null."""
    import raft_polars as rp

    (tmp_path / "rewards").mkdir()
    (tmp_path / "tokens").mkdir()
    pl.DataFrame(
        {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.2]}
    ).write_parquet(tmp_path / "rewards" / "r.parquet")
    pl.DataFrame({
        "stage": [0, 0, None], "prompt": [0, 0, 0], "cand": [0, 1, 0],
        "token": [0, 0, 0], "logprob": [-0.1, -0.2, -0.3],
    }).write_parquet(tmp_path / "tokens" / "t.parquet")  # fmt: skip
    report = rp.validate(str(tmp_path / "tokens"), rewards=str(tmp_path / "rewards"))
    orphans = [p for p in report.problems if p.kind == "orphan_tokens"]
    assert [(p.count, p.locations) for p in orphans] == [
        (1, ({"stage": None, "prompt": 0, "cand": 0, "rows": 1},))
    ]


def test_narrow_ids_take_the_fewest_bytes() -> None:
    ids = pl.DataFrame({"stage": [0, 7], "prompt": [1, 40_000], "cand": [-1, 3]})
    narrow = vk._narrow(ids)
    assert narrow.schema == {"stage": pl.Int8, "prompt": pl.Int32, "cand": pl.Int8}
    assert narrow.rows() == ids.rows()


_HOLD = r"""
import numpy as np, polars as pl
from raft_polars._engine import validate as vk
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
rng = np.random.default_rng(0)
def batch():  # 131,072 token rows, 16-character prompt ids
    prompts = np.repeat(rng.integers(0, 1 << 60, 512), 256)
    return pl.DataFrame({
        "stage": np.zeros(len(prompts), dtype=np.int64),
        "prompt": [f"{p:016x}" for p in prompts],
        "cand": np.zeros(len(prompts), dtype=np.int64),
        "logprob": np.full(len(prompts), -0.5),
    })
held = [vk._cut([batch()], has_position=False)]  # the compiled loop loaded
start = rss()
for _ in range(200):
    held.append(vk._cut([batch()], has_position=False))  # 512 runs a batch
print(rss() - start)
"""


def test_the_runs_of_text_ids_do_not_hold_their_batches() -> None:
    """The ids of a run are taken from the rows of a batch; taken as views, the
    text of 200 batches stayed alive (about 420 MiB here) for 100 K runs."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _HOLD], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 100  # MiB: 18 here, 424 with the views


def _plain_runs(
    rows: list[tuple[int, int, int, int | None, float | None]],
) -> list[tuple[tuple[int, int, int], list[int]]]:
    """The runs of consecutive rows with the same ids, with a loop: each run's
    ids and its rows, bad log-probs, jumps, first and last position (a null
    position is a jump, the first row's too, and counts as 0)."""
    runs: list[tuple[tuple[int, int, int], list[int]]] = []
    for stage, prompt, cand, token, logprob in rows:
        ids = (stage, prompt, cand)
        position = 0 if token is None else token
        if not runs or runs[-1][0] != ids:
            runs.append((ids, [0, 0, 0, position, position]))
            sums, jump = runs[-1][1], token is None
        else:
            sums = runs[-1][1]
            jump = token is None or position != sums[4] + 1
        sums[0] += 1
        sums[1] += not (logprob is not None and -math.inf < logprob <= 0.0)
        sums[2] += jump
        sums[4] = position
    return runs


_TOKEN_ROWS = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.integers(0, 2),
        st.integers(0, 1),
        st.one_of(st.none(), st.integers(0, 4)),
        st.one_of(st.none(), st.sampled_from([-1.5, -0.0, 0.5, -math.inf, math.nan])),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(rows=_TOKEN_ROWS, cuts=st.lists(st.integers(0, 80), max_size=6), calls=st.integers(1, 3))
def test_cut_finds_the_runs_of_rows_split_anywhere(
    rows: list[tuple[int, int, int, int | None, float | None]], cuts: list[int], calls: int
) -> None:
    """The runs of token rows handed over in batches of any sizes, larger and
    smaller in turn (the loop's buffers are the thread's, kept from batch to
    batch and from call to call), equal the plain loop's over all the rows."""
    frame = pl.DataFrame(
        rows,
        schema={"stage": pl.Int16, "prompt": pl.Int32, "cand": pl.Int64, "token": pl.Int32,
                "logprob": pl.Float64},
        orient="row",
    )  # fmt: skip
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    frames = [frame.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    for _ in range(calls):  # again with the buffers the call before used
        got = vk._cut(frames, has_position=True)
        runs = _plain_runs(rows)
        assert got.ids.rows() == [ids for ids, _ in runs]
        assert got.sums.T.tolist() == [sums for _, sums in runs]


_SOUND = st.dictionaries(
    st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 3)),
    st.sampled_from([-1.0, 0.0, 0.5, 2.0]),  # few values: ties are common
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    sound=_SOUND,
    min_reward=st.one_of(st.none(), st.sampled_from([0.0, 0.5])),
    n=st.integers(1, 2),
    types=st.lists(_TYPES, min_size=3, max_size=3),
)
def test_chosen_are_each_prompts_best(
    sound: dict[tuple[int, int, int], float], min_reward: float | None, n: int, types: list[Any]
) -> None:
    """The candidates validate takes as selected: per prompt the largest reward,
    ties to the smallest candidate id, none below ``min_reward`` (the compiled
    kernel's way for best-of-1, the query's for best-of-2), against a loop."""
    from raft_polars.selection import Selection

    frame = _frame(list(sound), types).with_columns(
        pl.Series("reward", list(sound.values()), dtype=pl.Float64)
    )
    if n > 1:
        selection = Selection(strategy="top_n", n=n, min_reward=min_reward)
    else:
        selection = Selection(min_reward=min_reward)
    chosen = vk._chosen(frame, selection, {})
    prompts: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for (stage, prompt, cand), reward in sound.items():
        prompts.setdefault((stage, prompt), []).append((-reward, cand))
    want = sorted(
        (stage, prompt, cand)
        for (stage, prompt), ranked in prompts.items()
        for minus, cand in sorted(ranked)[:n]
        if min_reward is None or -minus >= min_reward
    )
    assert sorted(chosen.rows()) == want


_TRIM = """
import threading, numpy as np, raft_polars._engine.validate as vk
def rss():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("RssAnon"))
kept = []
def work():  # a thread's heap: short-lived arrays, a small one that stays among them
    brief = []
    for _ in range(800):
        brief.append(np.ones(1 << 13))  # 64 KiB: below any threshold of malloc's to map it
        kept.append(np.ones(64))
    brief.clear()
start = rss()
thread = threading.Thread(target=work)
thread.start()
thread.join()
vk.trim()
print(rss() - start)
"""


def test_the_c_heap_is_trimmed_on_glibc() -> None:
    """validate hands the C heap's free pages back between its phases. On glibc
    (Linux), 50 MiB freed in a thread's heap among blocks still held stayed with
    the process without it (where malloc kept the blocks apart, ``free`` alone
    returns them: the test then holds either way)."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        vk.trim()  # nothing to do, and no error
        return
    assert vk._malloc_trim() is not None
    done = subprocess.run(
        [sys.executable, "-c", _TRIM], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 10 << 10  # KiB still held: 2 MiB here, 50 MiB without the trim


_TEXTS = st.lists(st.one_of(st.none(), st.sampled_from(["b", "a", "c10", "c9", ""])), max_size=20)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(_TEXTS, min_size=1, max_size=3))
def test_text_ids_coded_as_integers(frames: list[list[str | None]]) -> None:
    """Text ids as codes: the same text the same code in every frame, different
    texts different codes, numbered as they first appear, a null id null; the
    texts back from the codes."""
    given_frames = [
        pl.DataFrame({"stage": [0] * len(f), "prompt": pl.Series(f, dtype=pl.String),
                      "cand": [1] * len(f)}, schema_overrides={"stage": pl.Int64, "cand": pl.Int64})
        for f in frames
    ]  # fmt: skip
    coded, texts = vk._coded(*given_frames)
    assert list(texts) == ["prompt"]
    pairs = [
        (text, code)
        for f, c in zip(frames, coded, strict=True)
        for text, code in zip(f, c["prompt"].to_list(), strict=True)
    ]
    assert all((text is None) == (code is None) for text, code in pairs)
    named = {text: code for text, code in pairs if text is not None}
    assert len(set(named.values())) == len(named)
    assert all(named[text] == code for text, code in pairs if text is not None)
    first = list(dict.fromkeys(text for text, _ in pairs if text is not None))
    assert [named[t] for t in first] == list(range(len(first)))
    for f, c in zip(given_frames, coded, strict=True):
        assert c["stage"].equals(f["stage"])
        assert c["cand"].equals(f["cand"])
        assert vk._texts(c, texts).equals(f)
