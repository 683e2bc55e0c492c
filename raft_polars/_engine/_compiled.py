"""The engine's compiled loops (numba), imported only when they run.

Polars decodes the token rows; the loop here reads their raw ids, finds each run
of rows that share them, computes the run's position once and adds its
log-probs into the sums of its candidate slot: the gather from a small table
fused with the scatter-add, which Polars cannot do in one pass. String prompt
ids reach it as Arrow string views (zero copy from Polars): the loop finds a
row's prompt code by comparing its view, then its bytes, with the previous
row's (a response's rows share one prompt), and only on a change looks the
string up, exactly, in an open-addressing table of the candidates' prompts.
The rank step's best-of-K over dense groups, the nested layout's list sums and
the statistics' per-prompt loops (best-of-n, ranks and win rates) are here too.
Everything around them (reading, the slots, the checks) stays columnar."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import polars as pl

from raft_polars._engine._jit import njit

__all__ = [
    "NO_LOOKUP",
    "NO_MASK",
    "NO_STRINGS",
    "Ids",
    "Strings",
    "best_of_groups",
    "best_of_n",
    "best_of_nest",
    "column",
    "groups_of",
    "ids_of",
    "list_sums",
    "name_table",
    "nest_ids",
    "prompt_groups",
    "scatter",
    "strings",
    "touch",
]


class Strings(NamedTuple):
    """Strings as the loops read them (an Arrow string view array, zero copy):
    each one's 16-byte view as two words (its length, then its bytes when at
    most 12, zero-padded, else a prefix, a buffer and an offset into it); the
    data buffers one after the other (``bases``: where each starts), as bytes
    and as the 8-byte words starting at every byte; whether each string is not
    null (empty: none is)."""

    views: npt.NDArray[np.uint64]  # (n, 2)
    data: npt.NDArray[np.uint8]
    words: npt.NDArray[np.uint64]
    bases: npt.NDArray[np.int64]
    present: npt.NDArray[np.bool_]


_INLINE = 12  # strings this long or shorter are held whole in their views
_LOW = np.uint64(0xFFFFFFFF)


def _frozen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array`` read-only, as the buffers Arrow lends are (one compiled type)."""
    array.setflags(write=False)
    return array


def _strings(
    views: npt.NDArray[np.uint64], buffers: list[Any], present: npt.NDArray[np.bool_]
) -> Strings:
    """:class:`Strings` of ``views`` into the Arrow data ``buffers``: ``data``
    is a view of the memory from the first buffer's start to the last one's end
    (no copy; only the bytes the views point at are ever read)."""
    if not buffers:
        data = np.zeros(0, dtype=np.uint8)
        bases = np.zeros(1, dtype=np.int64)
    else:
        low = min(b.address for b in buffers)
        high = max(b.address + b.size for b in buffers)
        data = np.frombuffer((ctypes.c_uint8 * (high - low)).from_address(low), dtype=np.uint8)
        bases = np.array([b.address - low for b in buffers], dtype=np.int64)
    # the words starting at each byte, overlapping (no copy)
    count = max(data.shape[0] - 7, 0)
    words = np.ndarray((count,), dtype=np.uint64, buffer=data, strides=(1,))
    return Strings(views, _frozen(data), _frozen(words), _frozen(bases), _frozen(present))


def strings(series: pl.Series) -> Strings:
    """The strings of a Polars string column, for the compiled loops (valid
    while the column is)."""
    import pyarrow as pa

    array = series.to_arrow(compat_level=pl.CompatLevel.newest())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not (pa.types.is_string_view(array.type) or pa.types.is_binary_view(array.type)):
        array = array.cast(pa.string_view())
    n, offset = len(array), array.offset
    buffers = array.buffers()
    words = np.frombuffer(buffers[1], dtype=np.uint64)[2 * offset : 2 * (offset + n)]
    held = [b for b in buffers[2:] if b is not None]
    present = np.zeros(0, dtype=np.bool_)
    if array.null_count:
        present = array.is_valid().to_numpy(zero_copy_only=False)
    return _strings(_frozen(words.reshape(n, 2)), held, present)


NO_STRINGS = _strings(_frozen(np.zeros((0, 2), dtype=np.uint64)), [], np.zeros(0, dtype=np.bool_))
NO_LOOKUP = (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))  # no string prompts


@njit(inline="always")
def _start(bases: Any, second: np.uint64) -> int:  # pragma: no cover - compiled
    """Where a long string's bytes start in the data, from its view's second word."""
    return int(bases[np.int64(second & _LOW)] + np.int64(second >> np.uint64(32)))


@njit(inline="always")
def _equal(  # noqa: PLR0917 - compiled
    words: Any, data: Any, i: int, other_words: Any, other_data: Any, j: int, length: int
) -> bool:  # pragma: no cover - compiled
    """Whether ``length`` bytes at ``i`` and at ``j`` are the same: word by
    word, then byte by byte."""
    k = 0
    while k + 8 <= length:
        if words[i + k] != other_words[j + k]:
            return False
        k += 8
    while k < length:
        if data[i + k] != other_data[j + k]:
            return False
        k += 1
    return True


@njit(inline="always")
def _mix(h: np.uint64, word: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    h = (h ^ word) * np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(31))


@njit()
def _hash(text: Strings, i: int) -> np.uint64:  # pragma: no cover - compiled
    """A hash of string ``i`` of ``text``: of its view when it is held there,
    else of its length, words and last bytes."""
    first, second = text.views[i, 0], text.views[i, 1]
    length = np.int64(first & _LOW)
    if length <= _INLINE:
        return _mix(_mix(np.uint64(0), first), second)
    start, h = _start(text.bases, second), np.uint64(length)
    k = 0
    while k + 8 <= length:
        h = _mix(h, text.words[start + k])
        k += 8
    if k < length:
        word = np.uint64(0)
        for m in range(length - k):
            word |= np.uint64(text.data[start + k + m]) << np.uint64(8 * m)
        h = _mix(h, word)
    return h


@njit()
def _same(a: Strings, i: int, b: Strings, j: int) -> bool:  # pragma: no cover - compiled
    """Whether string ``i`` of ``a`` and string ``j`` of ``b`` are equal."""
    if a.views[i, 0] != b.views[j, 0]:  # length or first bytes differ
        return False
    length = int(a.views[i, 0] & _LOW)
    if length <= _INLINE:
        return bool(a.views[i, 1] == b.views[j, 1])
    return _equal(
        a.words, a.data, _start(a.bases, a.views[i, 1]),
        b.words, b.data, _start(b.bases, b.views[j, 1]), length,
    )  # fmt: skip


@njit()
def name_table(names: Strings) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """An open-addressing table (load at most 1/2) of the distinct strings
    ``names`` (no null) to their index: each slot's hash and index (-1: empty)."""
    n = names.views.shape[0]
    size = 2
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    hashes = np.zeros(size, dtype=np.uint64)
    codes = np.full(size, -1, dtype=np.int64)
    for i in range(n):
        h = _hash(names, i)
        at = h & mask
        while codes[at] >= 0:
            at = (at + np.uint64(1)) & mask
        hashes[at], codes[at] = h, i
    return hashes, codes


@njit()
def _code(
    rows: Strings,
    i: int,
    names: Strings,
    lookup: tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]],
) -> int:  # pragma: no cover - compiled; its callers are tested
    """The index in ``names`` of row ``i``'s string, found in ``lookup`` (-1:
    not there)."""
    hashes, codes = lookup
    mask = np.uint64(hashes.shape[0] - 1)
    h = _hash(rows, i)
    probe = h & mask
    while codes[probe] >= 0:
        if hashes[probe] == h and _same(rows, i, names, codes[probe]):
            return int(codes[probe])
        probe = (probe + np.uint64(1)) & mask
    return -1


Array = npt.NDArray[Any]


class Ids(NamedTuple):
    """The token rows' ids as :func:`scatter` reads them.

    A row's position is ``((stage - lows[0]) * spans[1] + (prompt - lows[1])) *
    spans[2] + (cand - lows[2])``, each part checked to lie in ``[0, span)``
    (else the row is outside). The stage and the prompt have one integer type
    (int32 or int64), the cand its own (int16, int32 or int64): one compiled
    loop for each combination (:func:`ids_of`). A part whose ``parts`` flag is 0 has
    no column (its array is ``stage`` again, compared but not used): it is 0,
    or, for the prompt when the loop reads string prompts, the code of the
    row's string. ``ok`` is empty when no id is null, else one flag per row
    (whether all of them are not null; a null id is outside).
    """

    stage: Array
    prompt: Array
    cand: Array
    ok: npt.NDArray[np.bool_]
    lows: npt.NDArray[np.int64]
    spans: npt.NDArray[np.int64]
    parts: npt.NDArray[np.int64]  # whether the prompt and the cand have columns


Column = tuple[Array, npt.NDArray[np.bool_] | None]  # values, validity (see column)
NO_MASK = _frozen(np.zeros(0, dtype=np.bool_))  # no row is null


def column(series: pl.Series) -> Column:
    """A numeric column as the loops read it: its values (zero copy when it
    has no nulls; a null's value is arbitrary) and its validity (None when it
    has no nulls), read-only both (one compiled type)."""
    if not series.has_nulls():
        return _frozen(series.to_numpy()), None
    values = series.fill_null(0) if series.dtype.is_integer() else series
    return _frozen(values.to_numpy()), _frozen(series.is_not_null().to_numpy())


def _loop_type(values: Array, *, narrow: bool = False) -> type[np.signedinteger[Any]]:
    """The integer type the loop reads ``values`` as: int32 or int64 (or int16,
    when ``narrow``), the narrowest that holds every value of their type."""
    bits = values.dtype.itemsize * 8 + (values.dtype.kind == "u")  # an unsigned type's sign bit
    if narrow and bits <= 16:
        return np.int16
    return np.int32 if bits <= 32 else np.int64


def ids_of(
    stage: Column,
    prompt: Column | None,
    cand: Column | None,
    lows: Sequence[int],
    spans: Sequence[int],
) -> Ids:
    """:class:`Ids` of the ``stage, prompt, cand`` columns (None: not there) in
    a box of ``lows`` and ``spans``: integer columns of at most 64 bits whose
    values fit int64. The stage and the prompt are widened to one type (int32
    or int64); the cand keeps its own, at least int16 (candidate ids are often
    narrow): a copy only of a column narrower than that, and at most 6 compiled
    loops."""
    first = [stage] if prompt is None else [stage, prompt]
    kind = max((_loop_type(values) for values, _ in first), key=lambda t: np.dtype(t).itemsize)
    arrays = [_frozen(values.astype(kind, copy=False)) for values, _ in first]
    if cand is not None:
        arrays.append(_frozen(cand[0].astype(_loop_type(cand[0], narrow=True), copy=False)))
    masks = [c[1] for c in (stage, prompt, cand) if c is not None and c[1] is not None]
    ok = NO_MASK
    if masks:
        ok = _frozen(np.logical_and.reduce(masks)) if len(masks) > 1 else masks[0]
    present = [prompt is not None, cand is not None]
    it = iter(arrays[1:])
    prompt_values, cand_values = (next(it) if there else arrays[0] for there in present)
    bounds = (_frozen(np.array(b, dtype=np.int64)) for b in (lows, spans, present))
    return Ids(arrays[0], prompt_values, cand_values, ok, *bounds)


@njit(inline="always")
def _values(  # noqa: PLR0917 - compiled
    values: Array,
    valid: npt.NDArray[np.bool_],
    lo: int,
    hi: int,
    total: float,
    top: float,
    empty: np.int64,
) -> tuple[float, float, np.int64]:  # pragma: no cover - compiled
    """Values ``lo..hi`` added into the sums of one slot or list: the NLL
    (value by value, in order), the largest value (NaN never replaces it) and
    the null count (``valid``: empty when no value is null). Inlined where it
    is called, once a run or a list, not a row."""
    masked = valid.shape[0] > 0
    for k in range(lo, hi):
        w = np.uintp(k)
        if masked and not valid[w]:
            empty += 1
            continue
        value = np.float64(values[w])
        total -= value
        if value > top:  # noqa: PLR1730 - NaN never replaces the maximum
            top = value
    return total, top, empty


_BLOCK = 16  # rows compared at once when looking for the end of a run


@njit()
def scatter(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    ids: Ids,
    rows: Strings,
    names: Strings,
    lookup: tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]],
    logprob: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_],
    table: npt.NDArray[np.int32],
    nll: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.int64],
    lp_max: npt.NDArray[np.float64],
    lp_nulls: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled; its callers are tested
    """Add each row to the sums of its slot ``table[position]`` (rows whose slot
    is negative are skipped): the NLL (float64, in row order), the row count,
    the largest log-prob and the null count.

    The position comes from the row's ids (:class:`Ids`); with string prompts
    (``rows`` not empty) the prompt's part is the index of the row's string in
    ``names`` (``lookup``: their :func:`name_table`). A null id, an id outside
    its span, a null prompt or one not in ``names`` is outside (the last entry
    of ``table``). Rows in a row with one string (one view, or the same bytes)
    have one code (a response's rows share one prompt); only a change is
    looked up. ``valid`` is empty when no log-prob is null, else one flag per
    row.
    """
    views, present, bases, words, data = rows.views, rows.present, rows.bases, rows.words, rows.data
    hashed = views.shape[0] > 0
    nulls = present.shape[0] > 0
    n = logprob.shape[0]
    # the previous string looked at: its view and code; the code of the rows at hand
    seen, known, code = False, -1, 0
    last0, last1 = np.uint64(0), np.uint64(0)
    i = 0
    while i < n:
        end = n  # rows i..end share one prompt code: all of them without strings
        if hashed:  # the rows that share row i's string (and validity) share its code
            first, second = views[i, 0], views[i, 1]
            here = (not nulls) or present[i]
            length = int(first & _LOW)
            end = i + 1
            # rows with the very same view (decoded from a dictionary page), a
            # block at a time; then row by row, comparing bytes
            while end + _BLOCK <= n:
                differ = False
                for j in range(_BLOCK):
                    v = np.uintp(end + j)
                    differ |= (views[v, 0] != first) | (views[v, 1] != second)
                    if nulls:
                        differ |= present[v] != here
                if differ:
                    break
                end += _BLOCK
            start = _start(bases, second) if length > _INLINE else 0
            while end < n and views[end, 0] == first and ((not nulls) or present[end] == here):
                other = views[end, 1]
                if other != second:  # the same string in other bytes (plain pages)?
                    if length <= _INLINE:
                        break
                    # compared here, not by _equal: a helper taking the arrays costs
                    # reference counting on every row of a plain page
                    at, same, k = _start(bases, other), True, 0
                    while same and k + 8 <= length:
                        same = words[at + k] == words[start + k]
                        k += 8
                    while same and k < length:
                        same = data[at + k] == data[start + k]
                        k += 1
                    if not same:
                        break
                end += 1
            if not here:  # null prompts: no candidate (the last string stays known)
                code = -1
            else:  # looked up, unless the string before a null run had this view
                if not (seen and first == last0 and second == last1):
                    known = _code(rows, i, names, lookup)
                    seen, last0, last1 = True, first, second
                code = known
        _add(ids, code, i, end, logprob, valid, table, nll, tokens, lp_max, lp_nulls)
        i = end


@njit()
def _add(  # noqa: PLR0917 - compiled
    ids: Ids,
    code: int,
    lo: int,
    hi: int,
    logprob: Array,
    valid: npt.NDArray[np.bool_],
    table: npt.NDArray[np.int32],
    nll: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.int64],
    lp_max: npt.NDArray[np.float64],
    lp_nulls: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled
    """Rows ``lo..hi`` of :func:`scatter`, whose prompts' code (when the loop
    reads strings) is ``code``.

    Run by run: a run is the rows that share their ids (a response's rows, as
    logs hold them), found by comparing ``_BLOCK`` rows at a time; its position
    is computed once, and when its slot is one, its rows are added to the
    slot's sums one by one, in row order. Every array is read from a local
    (an array read from the tuple in the loop, or passed to a helper, costs
    reference counting each time), with unsigned indices (no test for negative
    indices per row).
    """
    stage, prompt, cand, ok = ids.stage, ids.prompt, ids.cand, ids.ok
    nulls = ok.shape[0] > 0
    coded, has_cand = ids.parts[0] == 0, ids.parts[1] != 0
    outside = table.shape[0] - 1
    low0, low1, low2 = ids.lows[0], ids.lows[1], ids.lows[2]
    span1, span2 = ids.spans[1], ids.spans[2]
    limit0, limit1, limit2 = np.uint64(ids.spans[0]), np.uint64(span1), np.uint64(span2)
    r = lo
    while r < hi:
        u = np.uintp(r)
        # the run's ids; each part in [0, span) (one unsigned comparison a part)
        # and not null; no prompt column: the part is the code (0 without strings)
        s0, p0, c0 = stage[u], prompt[u], cand[u]
        ok0 = (not nulls) or ok[u]
        s = np.int64(s0) - low0
        p = np.int64(code) if coded else np.int64(p0) - low1
        c = np.int64(c0) - low2 if has_cand else np.int64(0)
        inside = (np.uint64(s) < limit0) & (np.uint64(p) < limit1) & (np.uint64(c) < limit2)
        at = (s * span1 + p) * span2 + c if inside and ok0 else np.int64(outside)
        slot = int(table[np.uintp(min(at, outside))])
        # the end of the run: a block of rows at a time, then row by row
        e = r + 1
        while e < hi:
            block = min(hi - e, _BLOCK)
            differ = False
            for j in range(block):
                v = np.uintp(e + j)
                differ |= (stage[v] != s0) | (prompt[v] != p0) | (cand[v] != c0)
            if nulls:
                for j in range(block):
                    differ |= ok[np.uintp(e + j)] != ok0
            if not differ:
                e += block
                continue
            while True:  # the row that differs is in this block
                v = np.uintp(e)
                same = (stage[v] == s0) & (prompt[v] == p0) & (cand[v] == c0)
                if not same or (nulls and ok[v] != ok0):
                    break
                e += 1
            break
        if slot >= 0:
            nll[slot], lp_max[slot], lp_nulls[slot] = _values(
                logprob, valid, r, e, nll[slot], lp_max[slot], lp_nulls[slot]
            )
            tokens[slot] += e - r
        r = e


@njit()
def list_sums(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    offsets: npt.NDArray[np.int64],
    values: Array,
    valid: npt.NDArray[np.bool_],
    nll: npt.NDArray[np.float64],
    lp_max: npt.NDArray[np.float64],
    lp_nulls: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled; its callers are tested
    """Per list ``i`` (its values ``offsets[i]..offsets[i + 1]``): the NLL
    (float64, added value by value in order from 0.0), the largest value
    (-inf when it has none; NaN never replaces it) and the null count;
    ``valid``: empty when no value is null, else one flag per value."""
    for i in range(offsets.shape[0] - 1):
        nll[i], lp_max[i], lp_nulls[i] = _values(
            values, valid, offsets[i], offsets[i + 1], 0.0, -np.inf, np.int64(0)
        )


@njit()
def best_of_groups(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    group: npt.NDArray[Any],
    cand: npt.NDArray[Any],
    reward: npt.NDArray[np.float64],
    first: npt.NDArray[np.int64],
    best: npt.NDArray[np.float64],
    ties: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    sums: npt.NDArray[np.float64],
) -> None:  # pragma: no cover - compiled; its callers are tested
    """Best-of-K over candidates in any order, into arrays of one entry per group
    (a ``(stage, prompt)``; ``counts`` and ``sums`` start at 0): the candidate
    with the largest (finite) reward, ties to the smallest ``cand``, with its own
    reward (-0.0 stays -0.0); the number of candidates sharing the best reward,
    the number of candidates and the reward sum."""
    for i in range(group.shape[0]):
        g, value = group[i], reward[i]
        counts[g] += 1
        sums[g] += value
        if counts[g] == 1 or value > best[g]:
            best[g], first[g], ties[g] = value, cand[i], 1
        elif value == best[g]:
            ties[g] += 1
            if cand[i] < first[g]:
                best[g], first[g] = value, cand[i]


@njit()
def _average_ranks(values: Any, ranks: Any) -> tuple[int, Any]:  # pragma: no cover - compiled
    """``ranks`` of ``values`` (1-based, ties their average rank); returns the
    number of distinct values and the positions in ascending order of value."""
    order = np.argsort(values, kind="mergesort")
    k, start, distinct = values.shape[0], 0, 0
    while start < k:
        end = start + 1
        while end < k and values[order[end]] == values[order[start]]:
            end += 1
        for j in range(start, end):
            ranks[order[j]] = (start + end + 1) / 2.0
        distinct += 1
        start = end
    return distinct, order


@njit()
def prompt_groups(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    starts: npt.NDArray[np.int64],
    reward: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.int64],
    counted: bool,
    selected: npt.NDArray[np.bool_],
    cand: npt.NDArray[np.int64],
    floats: npt.NDArray[np.float64],
    ints: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled; its callers are tested
    """Per-prompt statistics of candidates grouped by prompt (rows ``starts[g]
    .. starts[g + 1] - 1``; finite rewards; ``tokens`` read only when
    ``counted``), one row of ``floats`` (mean, min, max, population std of the
    rewards or NaN where the mean overflows, the selected candidates' win-rate
    sum, Spearman's rho or NaN) and
    of ``ints`` (selected, win count, longest count, the best selected row or
    -1, the selected candidates counted for the longest share) a prompt. A
    token count below 0 is unknown (a null list): its prompt gives no longest
    share and no rho. A candidate's win rate against the others is ``(lower + equal
    / 2) / (K - 1)`` from the sorted rewards (O(K log K) a prompt, whatever the
    number selected); rho is Pearson's r of average ranks, for K >= 3 with two
    distinct rewards and two distinct lengths."""
    for g in range(starts.shape[0] - 1):
        lo, hi = starts[g], starts[g + 1]
        k = hi - lo
        r = reward[lo:hi]
        total, low, high = 0.0, r[0], r[0]
        for i in range(k):
            total += r[i]
            low = min(low, r[i])
            high = max(high, r[i])
        mean = total / k
        # an overflowing mean (rewards of 1.7e308) leaves no spread to measure: NaN, as
        # the stage's pooled std gives it, not the inf of deviations from inf
        spread = 0.0 if np.isfinite(mean) else np.nan
        for i in range(k):
            spread += (r[i] - mean) ** 2
        known = counted
        for i in range(lo, hi):
            if tokens[i] < 0:
                known = False
        n_sel, best, longest = 0, -1, -1
        for i in range(lo, hi):
            if known and tokens[i] > longest:
                longest = tokens[i]
            if selected[i]:
                n_sel += 1
                if (
                    best < 0
                    or reward[i] > reward[best]
                    or (reward[i] == reward[best] and cand[i] < cand[best])
                ):
                    best = i
        win_sum, win_n, longest_n, longest_d, rho = 0.0, 0, 0, 0, np.nan
        ranked = k >= 2 and n_sel > 0
        with_rho = known and k >= 3
        distinct, by_reward, order = 0, np.empty(k), np.arange(k)
        if ranked or with_rho:  # one ranking of the rewards serves both
            distinct, order = _average_ranks(r, by_reward)
        if ranked:  # lower + equal / 2 is the average rank - 1; in ascending order
            for j in range(k):
                row = lo + order[j]
                if selected[row]:
                    win_sum += (by_reward[order[j]] - 1.0) / (k - 1)
                    win_n += 1
                    if known:
                        longest_d += 1
                        if tokens[row] == longest:
                            longest_n += 1
        if with_rho and distinct > 1:
            by_length = np.empty(k)
            if _average_ranks(tokens[lo:hi], by_length)[0] > 1:
                middle = (k + 1) / 2.0
                cov, var_r, var_t = 0.0, 0.0, 0.0
                for i in range(k):
                    dr, dt = by_reward[i] - middle, by_length[i] - middle
                    cov += dr * dt
                    var_r += dr * dr
                    var_t += dt * dt
                rho = cov / np.sqrt(var_r * var_t)
        floats[g, 0], floats[g, 1], floats[g, 2] = mean, low, high
        floats[g, 3], floats[g, 4], floats[g, 5] = np.sqrt(spread / k), win_sum, rho
        ints[g, 0], ints[g, 1], ints[g, 2], ints[g, 3] = n_sel, win_n, longest_n, best
        ints[g, 4] = longest_d


_NEGLIGIBLE = 2.0**-60  # weights left out of best_of_n's sums, relative to those added


@njit()
def best_of_n(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    starts: npt.NDArray[np.int64],
    group_stage: npt.NDArray[np.int64],
    reward: npt.NDArray[np.float64],
    prompts: npt.NDArray[np.int64],
    best: npt.NDArray[np.float64],
    worst: npt.NDArray[np.float64],
) -> None:  # pragma: no cover - compiled; its callers are tested
    """Best-of-n sums over groups of rewards (a ``(stage, prompt)`` each, rows
    ``starts[g] .. starts[g + 1] - 1``, each group's copied and sorted ascending
    here: ``reward`` is read only, as Polars' own buffer), added into arrays of
    one row per stage (``group_stage``) and one column per ``n - 1`` (all start
    at 0): ``prompts`` with at least ``n`` rewards, and the sums over them of
    the expected largest (``best``) and smallest (``worst``) of ``n`` drawn
    without replacement.

    The rank-``i`` reward weighs ``C(i-1, n-1) / C(k, n)`` in the largest and
    ``C(k-i, n-1) / C(k, n)`` in the smallest. The largest weight of each is
    ``n / k`` (the top reward's, the bottom one's): each weight follows from the
    one before by a ratio, from there down (``(i-n) / (i-1)``, ``(k-i-n+1) /
    (k-i)``), those too small for a float64 becoming 0, so that K in the
    thousands neither overflows nor underflows; each prompt's weights are
    divided by their float sum (1 in exact arithmetic). A multiplication a
    weight, where an ``exp`` of log-factorials took 4.0 s for one prompt of
    K = 20,000 (0.6 s then). The weights fall from the top (the bottom) down
    (up): a loop stops where the ranks left weigh at most ``2**-60`` of those
    added, at most 2**-60 of the largest reward in all, far below a float64's
    last bit of the result, so that a prompt of K candidates costs about
    ``40 K log K`` steps, not ``K**2`` (K = 50,000: 74 s before)."""
    scratch = np.empty(best.shape[1], dtype=np.float64)
    for g in range(starts.shape[0] - 1):
        lo, k, t = starts[g], starts[g + 1] - starts[g], group_stage[g]
        sorted_ = scratch[:k]
        sorted_[:] = reward[lo : lo + k]
        sorted_.sort()
        for n in range(1, k + 1):
            top = n / k
            w, best_sum, best_w = top, 0.0, 0.0
            for i in range(k, n - 1, -1):  # rank i, from the top
                best_sum += w * sorted_[i - 1]
                best_w += w
                if w * (i - n) <= _NEGLIGIBLE * best_w:  # the i - n weights left are smaller
                    break
                w *= (i - n) / (i - 1) if i > 1 else 0.0
            w, worst_sum, worst_w = top, 0.0, 0.0
            for i in range(1, k - n + 2):  # rank i, from the bottom
                worst_sum += w * sorted_[i - 1]
                worst_w += w
                if w * (k - n + 1 - i) <= _NEGLIGIBLE * worst_w:
                    break
                w *= (k - i - n + 1) / (k - i) if k > i else 0.0
            prompts[t, n - 1] += 1
            best[t, n - 1] += best_sum / best_w
            worst[t, n - 1] += worst_sum / worst_w


@njit()
def nest_ids(
    prompts: npt.NDArray[np.int64], ks: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], ...]:  # pragma: no cover - compiled; its callers are tested
    """The ids of nested lists by position, from the prompts of each stage and
    the candidates of each prompt: each candidate's group (its ``(stage,
    prompt)``, numbered in order) and ``cand``; each group's stage and prompt."""
    group_stage = np.empty(ks.shape[0], dtype=np.int64)
    group_prompt = np.empty(ks.shape[0], dtype=np.int64)
    g = 0
    for t in range(prompts.shape[0]):
        for i in range(prompts[t]):
            group_stage[g], group_prompt[g] = t, i
            g += 1
    group = np.empty(ks.sum(), dtype=np.int64)
    cand = np.empty(ks.sum(), dtype=np.int64)
    c = 0
    for g in range(ks.shape[0]):
        for j in range(ks[g]):
            group[c], cand[c] = g, j
            c += 1
    return group, cand, group_stage, group_prompt


@njit()
def best_of_nest(
    stage_offsets: npt.NDArray[np.int64],
    prompt_offsets: npt.NDArray[np.int64],
    reward: npt.NDArray[np.float64],
    prompts: npt.NDArray[np.int64],
    ks: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], ...]:  # pragma: no cover - compiled; its callers are tested
    """Best-of-K over nested lists' rewards (an Arrow list of lists: its two
    levels of offsets and its values), candidates numbered by position: the
    checks, :func:`nest_ids` and :func:`best_of_groups` in one call. Each group's
    stage, prompt and best ``cand``; all three empty when the nest does not
    have ``prompts`` per stage and ``ks`` candidates per prompt, when a stage or
    a prompt is empty, or when a reward is not finite (the caller then finds
    what to say)."""
    none = np.zeros(0, dtype=np.int64)
    counts, sizes = np.diff(stage_offsets), np.diff(prompt_offsets)
    if counts.shape != prompts.shape or sizes.shape != ks.shape:
        return none, none, none
    if (
        (counts != prompts).any()
        or (sizes != ks).any()
        or (counts == 0).any()
        or (sizes == 0).any()
    ):
        return none, none, none
    if not np.isfinite(reward).all():
        return none, none, none
    group, cand, group_stage, group_prompt = nest_ids(counts, sizes)
    size = group_stage.shape[0]
    # the outputs of best_of_groups (as groups_of makes them, which is not compiled)
    first, ties, members = (
        np.zeros(size, np.int64),
        np.zeros(size, np.int64),
        np.zeros(size, np.int64),
    )
    best, sums = np.zeros(size), np.zeros(size)
    best_of_groups(group, cand, reward, first, best, ties, members, sums)
    return group_stage, group_prompt, first


def groups_of(size: int) -> tuple[npt.NDArray[Any], ...]:
    """The output arrays of :func:`best_of_groups` for ``size`` groups."""
    return (
        np.zeros(size, dtype=np.int64),
        np.zeros(size),
        np.zeros(size, dtype=np.int64),
        np.zeros(size, dtype=np.int64),
        np.zeros(size),
    )


def touch() -> None:
    """Load the loops' machine code from numba's cache (the first load of a
    process initialises LLVM: ~0.3 s), on empty arrays of the common types."""
    codes = np.zeros(0, dtype=np.int64)
    best_of_groups(codes, codes, np.zeros(0), *groups_of(0))
    grid = np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0)), np.zeros((0, 0))
    best_of_n(np.zeros(1, dtype=np.int64), codes, _frozen(np.zeros(0)), *grid)
    nest_ids(codes, codes)
    name_table(NO_STRINGS)
    for kinds, values in (
        ((np.int64, np.int64), np.float64),  # Polars' own integers
        ((np.int32, np.int32), np.float32),  # the package's files
        ((np.int32, np.int16), np.float32),  # narrow candidate ids
    ):
        stage, cand = (_frozen(np.zeros(0, dtype=kind)) for kind in kinds)
        ids = ids_of((stage, None), (stage, None), (cand, None), (0, 0, 0), (1, 1, 1))
        sums = (np.zeros(1), np.zeros(1, dtype=np.int64), np.zeros(1), np.zeros(1, dtype=np.int64))
        table = np.zeros(1, dtype=np.int32)
        logprob = _frozen(np.zeros(0, values))
        scatter(ids, NO_STRINGS, NO_STRINGS, NO_LOOKUP, logprob, NO_MASK, table, *sums)
