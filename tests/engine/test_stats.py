"""stage_stats, best_of_n and prompt_stats against plain references: brute force
over every n-subset (itertools), loops over nested lists, the pass@k formula; on
hand-made ties, constant groups and ragged K, and on random logs in both layouts
and on both executors."""

from __future__ import annotations

import itertools
import math
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import dask_cluster
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import best_index, long_frames, nested_frame, write_split
from strategies import ragged_logs

import raft_polars as rp
from raft_polars import RaftInputError

Log = tuple[list[Any], list[Any]]
_IDS = ["stage", "prompt", "cand"]
_PROMPT = ["stage", "prompt"]


# --- the references ------------------------------------------------------------------------


def ref_best_of_n(rws: list[Any]) -> dict[tuple[int, int], tuple[int, float, float]]:
    """(stage, n) -> (prompts, mean expected best, mean expected worst), by brute
    force over every n-subset of each prompt's rewards."""
    out = {}
    for t, stage in enumerate(rws):
        largest = max(len(p) for p in stage)
        for n in range(1, largest + 1):
            bests, worsts = [], []
            for rewards in stage:
                if len(rewards) < n:
                    continue
                subsets = list(itertools.combinations(rewards, n))
                bests.append(sum(max(s) for s in subsets) / len(subsets))
                worsts.append(sum(min(s) for s in subsets) / len(subsets))
            out[(t, n)] = (len(bests), sum(bests) / len(bests), sum(worsts) / len(worsts))
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _avg_ranks(values: list[float]) -> list[float]:
    return [
        sum(1 for w in values if w < v) + (sum(1 for w in values if w == v) + 1) / 2 for v in values
    ]


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    vx = sum((a - mx) ** 2 for a in x)
    vy = sum((b - my) ** 2 for b in y)
    return cov / math.sqrt(vx * vy)


def ref_stage_stats(lps: list[Any], rws: list[Any]) -> list[dict[str, Any]]:
    """The statistics of best-of-K selection, by loops over the nested lists."""
    rows = []
    for stage_lp, stage_rw in zip(lps, rws, strict=True):
        every = [r for rewards in stage_rw for r in rewards]
        picked, wins, longest, rhos, lengths, sel_lengths = [], [], [], [], [], []
        zero = 0
        for lp, rewards in zip(stage_lp, stage_rw, strict=True):
            k = len(rewards)
            j = best_index(rewards)
            picked.append(rewards[j])
            measured = [None if x is None else len(x) for x in lp]  # None: a null list
            lengths += [x for x in measured if x is not None]
            sel_lengths.append(len(lp[j]))
            known = None not in measured
            sizes = [x or 0 for x in measured]
            if k >= 2:
                zero += len(set(rewards)) == 1
                lower = sum(1 for i, r in enumerate(rewards) if i != j and r < rewards[j])
                equal = sum(1 for i, r in enumerate(rewards) if i != j and r == rewards[j])
                wins.append((lower + 0.5 * equal) / (k - 1))
                if known:
                    longest.append(sizes[j] == max(sizes))
            if known and k >= 3 and len(set(rewards)) > 1 and len(set(sizes)) > 1:
                rhos.append(_pearson(_avg_ranks(rewards), _avg_ranks([float(s) for s in sizes])))
        rows.append({
            "reward_std": statistics.pstdev(every),
            "reward_best_std": statistics.pstdev(picked),
            "zero_variance": zero,
            "win_rate": _mean(wins),
            "length_mean": _mean([float(x) for x in lengths]),
            "length_selected_mean": _mean([float(x) for x in sel_lengths]),
            "longest_share": _mean([float(x) for x in longest]),
            "length_reward_corr": _mean(rhos),
        })  # fmt: skip
    return rows


def _close(a: Any, b: Any, tol: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


# --- the entries -------------------------------------------------------------------------


def _sources(
    log: Log, layout: str, root: Path, shuffle: int = 0, *, text: bool = False
) -> dict[str, Any]:
    """The log written as Parquet parts; ``text``: prompt ids as text (``p7``)."""
    lps, rws = log

    def ids(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.format("p{}", "prompt").alias("prompt")) if text else frame

    if layout == "nested":
        write_split(ids(nested_frame(lps, rws, shuffle=shuffle)), root / "n", 2)
        return {"source": str(root / "n")}
    tokens, rewards = long_frames(lps, rws, shuffle=shuffle)
    write_split(ids(tokens), root / "t", 3)
    write_split(ids(rewards), root / "r", 2)
    return {"source": str(root / "t"), "rewards": str(root / "r")}


def _engine(name: str) -> Any:
    return dask_cluster.engine() if name == "dask" else "polars"


def check_stats(log: Log, layout: str, engine: str, root: Path, *, text: bool = False) -> None:
    kwargs = _sources(log, layout, root, shuffle=3, text=text)
    on = _engine(engine)
    table = rp.stage_stats(**kwargs, engine=on)
    assert table.columns[:11] == list(rp.stage_losses(**kwargs).columns)
    for got, want in zip(table.iter_rows(named=True), ref_stage_stats(*log), strict=True):
        for name, value in want.items():
            assert _close(got[name], value), (name, got[name], value)
    curves = rp.best_of_n(**kwargs, engine=on)
    want_curves = ref_best_of_n(log[1])
    assert curves.height == len(want_curves)
    for row in curves.iter_rows(named=True):
        prompts, best, worst = want_curves[(row["stage"], row["n"])]
        assert row["prompts"] == prompts
        assert _close(row["expected_best"], best)
        assert _close(row["expected_worst"], worst)


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("layout", ["nested", "long"])
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(log=ragged_logs(max_stages=3, max_prompts=4, max_k=5))
def test_random_logs(log: Log, layout: str, engine: str) -> None:
    lps, rws = log
    if any(
        sum(len(lp[best_index(r)]) for lp, r in zip(s_lp, s_rw, strict=True)) == 0
        for s_lp, s_rw in zip(lps, rws, strict=True)
    ):
        return  # a stage with no selected tokens has no loss: an error, tested elsewhere
    with tempfile.TemporaryDirectory() as tmp:
        check_stats(log, layout, engine, Path(tmp))


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("layout", ["nested", "long"])
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(log=ragged_logs(max_stages=3, max_prompts=4, max_k=5))
def test_random_logs_with_text_prompt_ids(log: Log, layout: str, engine: str) -> None:
    """Text prompt ids (coded by the rank step, grouped by their codes in the
    best-of-n kernel) give the same statistics and curves."""
    lps, rws = log
    if any(
        sum(len(lp[best_index(r)]) for lp, r in zip(s_lp, s_rw, strict=True)) == 0
        for s_lp, s_rw in zip(lps, rws, strict=True)
    ):
        return  # a stage with no selected tokens has no loss: an error, tested elsewhere
    with tempfile.TemporaryDirectory() as tmp:
        check_stats(log, layout, engine, Path(tmp), text=True)


TIES: Log = (
    [[[[-1.0], [-1.0, -1.0], [-2.0]], [[-1.0], [-1.0]], [[-0.5]]]],
    [[[0.5, 0.5, 0.1], [0.3, 0.3], [0.9]]],
)


@pytest.mark.parametrize("layout", ["nested", "long"])
def test_ties_constant_groups_and_k_of_one(tmp_path: Path, layout: str) -> None:
    check_stats(TIES, layout, "polars", tmp_path)
    table = rp.stage_stats(**_sources(TIES, layout, tmp_path / "again"))
    row = table.row(0, named=True)
    assert row["zero_variance"] == 1  # the [0.3, 0.3] prompt; K = 1 does not count
    assert row["win_rate"] == pytest.approx((0.75 + 0.5) / 2)  # (1 + 0.5) / 2 and 0.5 / 1
    # only the first prompt has 3 candidates: reward ranks 2.5, 2.5, 1; length ranks 1.5, 3, 1.5
    assert row["length_reward_corr"] == pytest.approx(0.5)
    assert row["longest_share"] == pytest.approx(0.5)  # 1 token of 2 at most; 1 of 1


@pytest.mark.parametrize("k", [1, 4, 9])
def test_zero_one_rewards_give_pass_at_k(k: int) -> None:
    correct = [0, 1, k // 2, k]
    rws = [[[1.0] * c + [0.0] * (k - c) for c in correct]]
    lps = [[[[-1.0]] * k for _ in correct]]
    curves = rp.best_of_n(nested_frame(lps, rws))
    for row in curves.iter_rows(named=True):
        n = row["n"]
        want = sum(1 - math.comb(k - c, n) / math.comb(k, n) for c in correct) / len(correct)
        assert _close(row["expected_best"], want, 1e-12)


def test_one_correct_in_four_reads_one_at_n_four() -> None:
    curves = rp.best_of_n(nested_frame([[[[-1.0]] * 4]], [[[0.0, 1.0, 0.0, 0.0]]]))
    assert curves["expected_best"].round(12).to_list() == [0.25, 0.5, 0.75, 1.0]


def test_large_k_is_stable() -> None:
    """K = 3000: the binomials overflow a float64 long before; the weights don't."""
    k = 3000
    rewards = [float(i % 7) for i in range(k)]
    frame = pl.DataFrame({"stage": [0] * k, "prompt": [0] * k, "cand": list(range(k)),
                          "reward": rewards, "logprobs": [[-1.0]] * k})  # fmt: skip
    curves = rp.best_of_n(frame)
    assert curves.height == k
    values = curves["expected_best"].to_list()
    assert all(math.isfinite(v) for v in values)
    assert _close(values[0], sum(rewards) / k, 1e-9)
    assert _close(values[-1], max(rewards), 1e-9)
    # for n = 2, the brute force is still cheap: the mean max over all pairs
    pair = sum(max(a, b) for a, b in itertools.combinations(rewards, 2)) / math.comb(k, 2)
    assert _close(values[1], pair, 1e-9)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values))  # grows with n


@pytest.mark.parametrize("engine", ["polars", "dask"])
def test_prompt_stats(tmp_path: Path, engine: str) -> None:
    lps = [[[[-1.0]] * 2] * 3] * 2
    rws = [[[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]]
    kwargs = _sources((lps, rws), "nested", tmp_path)
    table = rp.prompt_stats(**kwargs, engine=_engine(engine))
    assert table.select("stage", "prompt", "status").rows() == [
        (0, 0, "unsolved"), (0, 1, "solved"), (0, 2, "learnable"),
        (1, 0, "unsolved"), (1, 1, "solved"), (1, 2, "learnable"),
    ]  # fmt: skip
    assert table["zero_variance"].to_list() == [True, True, False, True, True, True]
    assert table["stages"].to_list() == [2] * 6
    assert table.filter(stage=0, prompt=2)["cand"].item() == 1


def _plain_std(rewards: list[float]) -> float:
    """The spread as docs/semantics.md states it: the float64 sum (sequential), the
    mean from it, NaN where that overflows, else the deviations squared and added."""
    mean = 0.0
    for r in rewards:
        mean += r
    mean /= len(rewards)
    if not math.isfinite(mean):
        return math.nan
    total = 0.0
    for r in rewards:
        total += (r - mean) * (r - mean)  # inf past the range, where ** raises
    return math.sqrt(total / len(rewards))


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize(
    "rewards",
    [[1.7e308, 1.7e308], [1e308, 1e308, 1e308], [1.7e308, -1.7e308], [1e308, 5e307], [1.0, 3.0]],
)
def test_a_spread_at_the_float_limits_is_the_same_per_stage_and_per_prompt(
    rewards: list[float], engine: str
) -> None:
    """One prompt a stage: the stage's reward_std and the prompt's are one number,
    NaN where the mean overflows (rewards of 1.7e308), inf where only the squared
    deviations do."""
    frame = nested_frame([[[[-1.0]] * len(rewards)]], [[rewards]])
    want = _plain_std(rewards)
    stage = rp.stage_stats(frame, engine=_engine(engine))["reward_std"].item()
    prompt = rp.prompt_stats(frame, engine=_engine(engine))["reward_std"].item()
    for got in (stage, prompt):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    log=ragged_logs(max_stages=3, max_prompts=5, max_k=6),
    text=st.booleans(),
    by_prompt=st.booleans(),
    seed=st.integers(0, 9),
)
def test_best_of_n_sums_on_candidates_in_any_order(
    log: Any, text: bool, by_prompt: bool, seed: int
) -> None:
    """The best-of-n kernel sorts each prompt's rewards itself, and the rows by
    prompt where they do not come by prompt: rows in prompt order (rewards in
    any order within) or shuffled, integer or text prompt ids, give the
    brute-force curves."""
    from raft_polars._engine import stats

    rows = [
        {"stage": t, "prompt": f"q{p:03d}" if text else p, "cand": c, "reward": r}
        for t, stage in enumerate(log[1])
        for p, rewards in enumerate(stage)
        for c, r in enumerate(rewards)
    ]
    cands = pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=seed)
    if by_prompt:
        cands = cands.sort("stage", "prompt", maintain_order=True)
    got = stats.best_of_n_sums(cands)
    want = ref_best_of_n(log[1])
    assert sorted(zip(got["stage"], got["n"], strict=True)) == sorted(want)
    for row in got.iter_rows(named=True):
        prompts, best, worst = want[(row["stage"], row["n"])]
        assert row["prompts"] == prompts
        assert _close(row["best_sum"] / prompts, best)
        assert _close(row["worst_sum"] / prompts, worst)


@pytest.mark.parametrize(("k", "correct"), [(1, 1), (7, 0), (50, 3), (2000, 17), (2000, 1999)])
def test_best_of_n_at_large_k_is_pass_at_n(k: int, correct: int) -> None:
    """Rewards in {0, 1}: the expected best of n is pass@n, 1 - C(k-c, n) / C(k, n),
    and the expected worst C(c, n) / C(k, n), exact by Python's integers, for K
    in the thousands (the weights' log-factorials neither overflow nor underflow)."""
    from fractions import Fraction

    from raft_polars._engine import stats

    rewards = [1.0] * correct + [0.0] * (k - correct)
    cands = pl.DataFrame(
        {"stage": [3] * k, "prompt": [5] * k, "cand": list(range(k)), "reward": rewards}
    ).sample(fraction=1.0, shuffle=True, seed=k)
    got = stats.best_of_n_sums(cands)
    assert got["n"].to_list() == list(range(1, k + 1))
    assert set(got["stage"]) == {3}
    assert set(got["prompts"]) == {1}
    for n, best, worst in zip(got["n"], got["best_sum"], got["worst_sum"], strict=True):
        total = math.comb(k, n)
        assert _close(best, float(1 - Fraction(math.comb(k - correct, n), total)), 1e-9)
        assert _close(worst, float(Fraction(math.comb(correct, n), total)), 1e-9)


def test_best_of_n_at_large_k_against_exact_sums() -> None:
    """Continuous rewards, K = 300: every n against the closed form in exact
    rational arithmetic. The kernel stops adding a prompt's weights where those
    left weigh at most 2**-60 of the sum (K = 20,000: 11.7 s -> 0.14 s)."""
    from fractions import Fraction

    from raft_polars._engine import stats

    k = 300
    rng = random.Random(7)
    rewards = [rng.uniform(-5.0, 5.0) for _ in range(k)]
    cands = pl.DataFrame({"stage": [0] * k, "prompt": [0] * k, "cand": list(range(k)),
                          "reward": rewards})  # fmt: skip
    got = stats.best_of_n_sums(cands)
    ranked = [Fraction(r) for r in sorted(rewards)]
    for n, best, worst in zip(got["n"], got["best_sum"], got["worst_sum"], strict=True):
        total = math.comb(k, n)
        top = sum(r * math.comb(i, n - 1) for i, r in enumerate(ranked) if i >= n - 1)
        bottom = sum(
            r * math.comb(k - 1 - i, n - 1) for i, r in enumerate(ranked) if k - 1 - i >= n - 1
        )
        assert abs(best - float(top / total)) <= 1e-12
        assert abs(worst - float(bottom / total)) <= 1e-12


@settings(max_examples=30, deadline=None)
@given(
    log=ragged_logs(max_stages=3, max_prompts=6, max_k=5),
    candidates=st.sampled_from([1, 2, 5]),
    counted=st.booleans(),
)
def test_statistics_by_parts_of_whole_prompts(log: Any, candidates: int, counted: bool) -> None:
    """stage_stats and prompt_stats build their candidate tables a bounded number
    of candidates at a time (all 2.6 M candidates of 692 M tokens at once peaked
    at 1.5 GiB): any part size gives the per-stage statistics and the per-prompt
    rows of one whole table."""
    from raft_polars._engine.stats import (
        by_prompts,
        candidate_table,
        prompt_rows,
        prompt_table,
        stage_sums,
        stats_parts,
        stats_table,
    )

    rows = [
        {"stage": t, "prompt": p, "cand": c, "reward": r}
        for t, stage in enumerate(log[1])
        for p, rewards in enumerate(stage)
        for c, r in enumerate(rewards)
    ]
    keys = pl.DataFrame(rows)
    chosen = keys.sort("reward", descending=True).unique(["stage", "prompt"], keep="first")
    tokens = None
    if counted:
        tokens = keys.select("stage", "prompt", "cand", (pl.col("cand") * 3 + 1).alias("tokens"))
    whole = candidate_table(keys, chosen, tokens)
    parts = list(by_prompts(keys, chosen, tokens, candidates=candidates))
    assert sum(p.height for p in parts) == whole.height
    assert sum(p.select("stage", "prompt").n_unique() for p in parts) == (
        whole.select("stage", "prompt").n_unique()
    )  # whole prompts: no prompt in two parts
    order = ["stage", "prompt"]
    want = prompt_table(whole).sort(order)
    got = prompt_rows(keys, chosen, tokens, candidates=candidates).sort(order)
    assert got.columns == want.columns
    for a, b in zip(got.iter_rows(), want.iter_rows(), strict=True):
        assert all(_close(x, y) for x, y in zip(a, b, strict=True)), (a, b)
    lengths = tokens is not None
    want_stats = stats_table([stage_sums(whole, prompt_table(whole))], lengths=lengths).sort(
        "stage"
    )
    got_stats = stats_table(
        stats_parts(keys, chosen, tokens, candidates=candidates), lengths=lengths
    ).sort("stage")
    for a, b in zip(got_stats.iter_rows(), want_stats.iter_rows(), strict=True):
        assert all(_close(x, y) for x, y in zip(a, b, strict=True)), (a, b)


@st.composite
def _candidate_tables(draw: st.DrawFn) -> pl.DataFrame:
    """Candidate tables as the statistics get them, in any row order: several
    selected a prompt or none (top-n, min_reward), tied rewards and lengths,
    token counts or none (a rewards-only log), some unknown (a null list)."""
    counted = draw(st.booleans())
    unknown = st.none() if counted and draw(st.booleans()) else st.nothing()
    rows = []
    for stage in draw(st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)):
        for prompt in range(draw(st.integers(1, 4))):
            k = draw(st.integers(1, 7))
            rewards = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, -2.5, 1e-3]), min_size=k,
                                    max_size=k))  # fmt: skip
            for cand in range(k):
                rows.append({
                    "stage": stage, "prompt": prompt, "cand": cand, "reward": rewards[cand],
                    "selected": draw(st.booleans()),
                    "tokens": draw(st.integers(0, 4) | unknown) if counted else None,
                })  # fmt: skip
    frame = pl.DataFrame(rows, schema={"stage": pl.Int64, "prompt": pl.Int64, "cand": pl.Int64,
                                       "reward": pl.Float64, "selected": pl.Boolean,
                                       "tokens": pl.Int64})  # fmt: skip
    return frame.sample(fraction=1.0, shuffle=True, seed=draw(st.integers(0, 2**16)))


def _ref_prompt(rows: list[dict[str, Any]], counted: bool) -> dict[str, Any]:
    """One prompt's statistics by loops over its candidates (``counted``: the
    table holds token counts; a prompt with an unknown one has no longest share
    and no rho)."""
    rewards = [r["reward"] for r in rows]
    sizes = [r["tokens"] for r in rows]
    counted = counted and None not in sizes
    k = len(rows)
    chosen = [r for r in rows if r["selected"]]
    best = min(chosen, key=lambda r: (-r["reward"], r["cand"])) if chosen else None
    wins, longest = [], 0
    for r in chosen if k >= 2 else []:
        lower = sum(1 for x in rewards if x < r["reward"])
        equal = sum(1 for x in rewards if x == r["reward"]) - 1
        wins.append((lower + 0.5 * equal) / (k - 1))
        longest += counted and r["tokens"] == max(sizes)
    measured = len(wins) if counted else 0
    rho = None
    if counted and k >= 3 and len(set(rewards)) > 1 and len(set(sizes)) > 1:
        rho = _pearson(_avg_ranks(rewards), _avg_ranks([float(s) for s in sizes]))
    return {
        "candidates": k, "reward_mean": statistics.fmean(rewards), "reward_min": min(rewards),
        "reward_max": max(rewards), "reward_std": statistics.pstdev(rewards),
        "zero_variance": k >= 2 and len(set(rewards)) == 1, "selected": len(chosen),
        "cand": best and best["cand"], "tokens": best and best["tokens"],
        "win_sum": sum(wins), "win_n": len(wins), "longest_n": longest, "longest_d": measured,
        "rho": rho,
    }  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(cands=_candidate_tables())
def test_prompt_table_against_loops_over_each_prompt(cands: pl.DataFrame) -> None:
    from raft_polars._engine import stats

    got = stats.prompt_table(cands)
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in cands.sort("stage", "prompt", "cand").iter_rows(named=True):
        groups.setdefault((row["stage"], row["prompt"]), []).append(row)
    assert got.select("stage", "prompt").rows() == sorted(groups)
    for row in got.iter_rows(named=True):
        want = _ref_prompt(groups[row["stage"], row["prompt"]], cands["tokens"].count() > 0)
        for name, value in want.items():
            if isinstance(value, float):
                assert _close(row[name], value, 1e-12), (name, row, want)
            else:
                assert row[name] == value, (name, row, want)


@pytest.mark.parametrize("engine", ["polars", "dask"])
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(log=ragged_logs(max_stages=3, max_prompts=4, max_k=5), data=st.data())
def test_null_lists_have_no_length(
    tmp_path_factory: pytest.TempPathFactory, log: Log, engine: str, data: st.DataObject
) -> None:
    """A null list of a candidate not selected is a length not known: left out
    of length_mean, and its prompt out of longest_share and length_reward_corr
    (not a response of 0 tokens); the selected one's null list is an error in
    prompt_stats as in stage_stats."""
    lps, rws = log
    best = {(t, i, best_index(r)) for t, stage in enumerate(rws) for i, r in enumerate(stage)}
    places = [
        (t, i, j)
        for t, stage in enumerate(lps)
        for i, prompt in enumerate(stage)
        for j in range(len(prompt))
        if (t, i, j) not in best
    ]
    nulls = set(data.draw(st.lists(st.sampled_from(places), unique=True))) if places else set()
    holed = [
        [[None if (t, i, j) in nulls else x for j, x in enumerate(p)] for i, p in enumerate(s)]
        for t, s in enumerate(lps)
    ]
    frame = nested_frame(lps, rws)
    hole = pl.Series([(t, i, j) in nulls for t, i, j in frame.select(_IDS).iter_rows()])
    frame = frame.with_columns(pl.when(hole).then(None).otherwise("logprobs").alias("logprobs"))
    path = tmp_path_factory.mktemp("holes") / "log.parquet"
    frame.write_parquet(path)
    on = _engine(engine)
    table = rp.stage_stats(path, engine=on)
    for got, want in zip(table.iter_rows(named=True), ref_stage_stats(holed, rws), strict=True):
        for name, value in want.items():
            assert _close(got[name], value), (name, got[name], value)
    prompts = rp.prompt_stats(path, engine=on)
    want_tokens = [len(lps[t][i][best_index(rws[t][i])]) for t, i in prompts.select(_PROMPT).rows()]
    assert prompts["tokens"].to_list() == want_tokens
    if best:
        t, i, j = min(best)
        chosen = pl.Series([(t, i, j) == key for key in frame.select(_IDS).iter_rows()])
        frame.with_columns(
            pl.when(chosen).then(None).otherwise("logprobs").alias("logprobs")
        ).write_parquet(path)
        where = f"stage {t}, prompt {i}, candidate {j}"
        for call in (rp.stage_stats, rp.prompt_stats):
            with pytest.raises(RaftInputError, match=f"logprobs is null .* at {where}"):
                call(path, engine=on)
