"""The ``raft-polars`` command line (also ``python -m raft_polars``).

Commands: ``losses`` (the per-stage table), ``select`` (write the selected batch
for fine-tuning), ``validate`` (a full check of a log), ``report`` (a figure of the
trend) and ``generate`` (deterministic synthetic logs). ``raft-polars COMMAND
--help`` documents each one; ``docs/cli.md`` is the tour.

Exit codes, decided in one place (:func:`main`): 0 ok, 1 ``validate`` found
problems, 2 bad usage or bad input (printed as one line on stderr, ``raft-polars:
error: ...``, never a traceback), 130 interrupted.

Examples
--------
>>> import tempfile
>>> from raft_polars.cli import main
>>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +ELLIPSIS
...     main(["generate", tmp + "/log", "--stages", "2", "--prompts", "4", "--k", "2"])
...     main(["losses", tmp + "/log"])
wrote 2 file(s) to .../log (nested layout: 2 stage(s) x 4 prompt(s) x 2 candidate(s))
0
stage loss   prompts candidates selected tokens reward_best_mean reward_mean reward_lift ties below_min
    0 1.5918       4          8        4     78           0.0300     -0.2137      0.2437    0         0
    1 0.1959       4          8        4    152           1.4975      1.1113      0.3862    0         0
0
"""  # noqa: E501 - the doctest shows the full-width table

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO

import polars as pl

from raft_polars import __version__
from raft_polars._engine.read import CANONICAL_COLUMNS
from raft_polars._engine.reduce import LOSS_COLUMNS
from raft_polars._engine.sources import Source, local_files, local_specs, write_failure
from raft_polars._export import EXPORT_FORMATS, json_lines, json_value, table_cell
from raft_polars._signals import finished, hold_if_signalled, running
from raft_polars.errors import MissingDependencyError, RaftInputError, RaftPolarsError

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "entrypoint", "main"]

PROG = "raft-polars"
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_PARQUET = (".parquet", ".pq")
_JSONL = (".jsonl", ".ndjson")
_FIGURE = (".png", ".svg", ".pdf")


class UsageError(Exception):
    """Options that parse but do not fit together, or an output path that cannot be used."""


class ProblemsFound(Exception):
    """``validate`` found problems (exit code 1); the report is already printed."""


# --- entry points and the one place where outcomes become exit codes -----------------


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per outcome
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Usage errors found by the parser exit through ``SystemExit(2)`` (``--help`` and
    ``--version`` through ``SystemExit(0)``), as argparse does.
    """
    running()  # a signal from now on ends the command with 130 or 143 (``_signals``)
    args = _parser().parse_args(argv)
    if sys.stdout is None:  # started with standard output closed (``>&-``)
        _error("standard output is closed: nothing could be printed")
        return EXIT_USAGE
    _notes()
    out = sys.stdout
    sys.stdout = _Guarded(out)
    try:
        with _progress(args):
            try:
                args.run(args)
            except ProblemsFound:  # the report is printed: validate finished, exit 1
                code = EXIT_PROBLEMS
            else:
                code = EXIT_OK
        sys.stdout.flush()  # a full disk shows here, not after main
        # done, the output complete: a signal from now on (while a local Dask
        # cluster closes, say) ends the process with this code (``_signals``)
        finished(code)
        return code
    except _StdoutFailed as exc:
        _error(f"cannot write to standard output: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (``raft-polars losses ... | head -1``): not an error
        _silence_stdout()
        return EXIT_OK
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except RaftPolarsError as exc:
        _error(_cli_terms(str(exc)))
        return EXIT_USAGE
    except pl.exceptions.PolarsError as exc:
        _error(f"polars: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        _error(_os_message(exc))
        return EXIT_USAGE
    except MemoryError as exc:
        # numpy says how much it asked for; Polars and pyarrow abort on their own
        asked = f" ({exc})" if str(exc) else ""
        _error(f"out of memory{asked}: the input or the options need more than this machine has")
        return EXIT_USAGE
    finally:
        sys.stdout = out


class _StdoutFailed(Exception):
    """Standard output cannot be written (a full disk): its reason."""


class _Guarded:
    """Standard output whose write errors (other than a reader gone) raise
    :class:`_StdoutFailed`, told apart from the errors of the files written."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with _failing_stdout():
            written: int = self._stream.write(text)
        return written

    def flush(self) -> None:
        with _failing_stdout():
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _failing_stdout() -> Iterator[None]:
    """A write error of standard output as :class:`_StdoutFailed` (a reader gone,
    BrokenPipeError, stays itself: it is not an error)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _StdoutFailed(exc.strerror or str(exc)) from exc


@contextlib.contextmanager
def _progress(args: argparse.Namespace) -> Iterator[None]:
    """Progress on stderr, one redrawn line, when it is a terminal and not
    ``--quiet``; nothing otherwise."""
    if getattr(args, "quiet", True) or not sys.stderr.isatty():
        yield
        return
    from raft_polars._progress import Clock, reporting

    clock = Clock()
    drawn = [False]

    def draw(message: str) -> None:
        line = f"{PROG}: {message} [{clock.elapsed():.1f} s]"
        width = shutil.get_terminal_size(fallback=(80, 24)).columns - 1
        if len(line) > width:  # a wrapped line: the clearing reached its last row only
            line = line[: max(width - 3, 0)] + "..."
        sys.stderr.write(f"\r\x1b[K{line}")
        sys.stderr.flush()
        drawn[0] = True

    def clear() -> None:
        if drawn[0]:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            drawn[0] = False

    out = sys.stdout
    sys.stdout = _Clearing(out, clear)  # the result, on a clear line
    try:
        with reporting(draw):
            yield
    finally:
        sys.stdout = out
        clear()


class _Clearing:
    """A text stream that clears the progress line before each write (stdout
    and stderr share the terminal: the result began on the progress line)."""

    def __init__(self, stream: Any, clear: Callable[[], None]) -> None:
        self._stream, self._clear = stream, clear

    def write(self, text: str) -> int:
        self._clear()
        written: int = self._stream.write(text)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def entrypoint() -> NoReturn:
    """The ``raft-polars`` console script."""
    from raft_polars._native_stderr import without_panic_reports

    for stream in (sys.stdout, sys.stderr):  # a path or an id the terminal cannot show
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    if sys.stderr is None:  # started with standard error closed (``2>&-``, a daemon):
        devnull = os.open(os.devnull, os.O_WRONLY)  # its messages go nowhere, as asked
        if devnull != 2:
            os.dup2(devnull, 2)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the process's own stream

    from raft_polars._signals import install

    install()  # Ctrl-C, SIGTERM and SIGHUP end the process at once (``_signals``)
    try:
        with without_panic_reports():
            code = main()
    except BaseException:
        hold_if_signalled()  # a traceback a signal caused: its ending ends the process
        raise
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.exit(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _error(message: str) -> None:
    hold_if_signalled()  # an error a signal caused: its ending speaks, once (``_signals``)
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    print(f"{PROG}: error: {text}", file=sys.stderr)


# the engine's hints name Python arguments; on the command line they are options
_CLI_TERMS = (
    ("pass the rewards table with rewards=", "pass the rewards table with --rewards PATH"),
    (
        "map your own names with columns={'canonical': 'yours'}",
        "map your own names with --column canonical=theirs",
    ),
    ("is mapped onto the same name by columns=", "is mapped onto the same name by --column"),
    ("pass force=True to replace it", "pass --force to replace it"),
    ("option stage=", "--stage "),
    ("option prompt_column=", "--prompt-column "),
    ("option response_column=", "--response-column "),
    ("with prompt_column=COL", "with --prompt-column COL"),
    ("with response_column=COL", "with --response-column COL"),
    ("option min_margin=", "--min-margin "),
    ("min_margin= applies", "--min-margin applies"),
    ("format='dpo'", "--format dpo"),
    ("format='wide'", "--format wide"),
    ("prompt_column=/response_column= apply", "--prompt-column/--response-column apply"),
    ("option format=", "--format "),
    ("prompt_column=/response_column= output", "--prompt-column/--response-column output"),
    ("rename it with columns=", "rename it with --column"),
)


def _cli_terms(message: str) -> str:
    for python, option in _CLI_TERMS:
        message = message.replace(python, option)
    return message


class _Notes(logging.Handler):
    """The package's log warnings (a scheduler without workers) as ``raft-polars:
    note:`` lines on the standard error of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"{PROG}: note: {record.getMessage()}", file=sys.stderr, flush=True)


def _notes() -> None:
    logger = logging.getLogger("raft_polars")
    if not any(isinstance(h, _Notes) for h in logger.handlers):
        logger.addHandler(_Notes(logging.WARNING))


def _os_message(exc: OSError) -> str:
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {str(exc.filename)!r}"
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _written(out: Path | str) -> Iterator[None]:
    """The lines printed once OUT is complete: failing to print them (standard
    output on a full disk) is an error that says OUT was written."""
    try:
        yield
        sys.stdout.flush()
    except _StdoutFailed as exc:
        msg = f"wrote {out}, but cannot write to standard output: {exc}"
        raise UsageError(msg) from exc


# --- the parser ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error, and negative
    numbers in every float spelling taken as values (``--min-reward -1e-3``,
    ``-inf``), where argparse takes only ``-1`` and ``-0.5`` for numbers and the
    rest for options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        hint = f"see '{self.prog} --help'"
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} ({hint})\n")


_NEGATIVE_NUMBER = re.compile(
    r"^-(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][+-]?\d[\d_]*)?$|^-(inf|infinity|nan)$", re.I
)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="RAFT (Reward rAnked FineTuning) stage logs: per-stage SFT losses, "
        "the selected batch, validation, a trend figure and synthetic logs.",
        epilog="Exit codes: 0 ok, 1 validate found problems, 2 bad usage or bad input.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    log = _log_options()
    selection = _selection_options()
    engine = _engine_options()
    table = _table_options()
    reduction = _reduction_options()

    p = commands.add_parser(
        "losses",
        parents=[log, selection, reduction, table, engine],
        help="per-stage loss and reward table",
        description="Per-stage SFT loss (pooled token mean NLL of the selected responses, "
        "rounded to 4 decimals) with prompts, candidates, selected responses, their tokens, "
        "the mean selected reward (reward_best_mean), the mean reward of all candidates, "
        "their difference (reward_lift), the prompts whose best reward is shared (ties) and "
        "the prompts left with nothing by --min-reward (below_min).",
    )
    p.set_defaults(run=_cmd_losses)

    p = commands.add_parser(
        "stats",
        parents=[log, selection, reduction, table, engine],
        help="per-stage statistics, best-of-n curves, per-prompt table",
        description="The losses table plus reward spread (reward_std, reward_best_std), "
        "zero-variance prompts, win rate of the selection, length bias (length_mean, "
        "length_selected_mean, longest_share, length_reward_corr). --best-of-n prints the "
        "expected best and worst reward of n candidates per stage; --per-prompt -o OUT "
        "writes one row per (stage, prompt) with its difficulty and status "
        "(solved / unsolved / learnable). JSON writes NaN and infinities as strings.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best-of-n", action="store_true", help="print the best-of-n curves")
    which.add_argument(
        "--per-prompt", action="store_true", help="write the per-prompt table to -o OUT"
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        type=_output_name,
        help="with --per-prompt: .parquet or .jsonl file",
    )
    p.add_argument(
        "--status",
        choices=("solved", "unsolved", "learnable"),
        help="with --per-prompt: keep the prompts of this status only",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=_cmd_stats)

    p = commands.add_parser(
        "select",
        parents=[log, selection, engine],
        help="write the selected batch for fine-tuning (Parquet or JSONL)",
        description="Write the selected responses in the columns of a trainer (--format): "
        "rows (default: stage, prompt_id, cand, reward, tokens and every extra "
        "candidate-level column), sft (prompt, completion), chat (messages), dpo (prompt, "
        "chosen, rejected: the best selected and the worst candidate of each prompt), "
        "openrlhf (input, output, reward) or wide (one row per prompt, rewards as lists). "
        "The text formats also write stage, prompt_id and the candidate ids. The output "
        "is streamed to a temporary file next to OUT and renamed at the end, so a failed "
        "or interrupted run leaves no partial file.",
    )
    _select_options(p)
    p.set_defaults(run=_cmd_select)

    p = commands.add_parser(
        "validate",
        parents=[log, selection, engine],
        help="check a whole log and report every problem (exit 1 if any)",
        description="Read the whole log and report every problem with its count and first "
        "locations: null ids, duplicate candidates, bad rewards, bad log-probs (null, NaN, "
        "infinite, > 0) in selected and in other responses, stages with no selected tokens, "
        "token rows without a reward, null/duplicate token positions and gaps. Exit 0 when "
        "clean, 1 when problems are found, 2 when the input cannot be read as a stage log "
        "(missing file, unreadable Parquet, missing column, wrong type).",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--limit",
        type=_limit,
        default=5,
        metavar="N",
        help="locations shown per problem kind (default: 5; 0: the counts only)",
    )
    p.set_defaults(run=_cmd_validate)

    p = commands.add_parser(
        "report",
        parents=[log, selection, reduction, engine],
        help="HTML report or figure of a log (needs raft-polars[plot])",
        description="OUT.html: one self-contained page (styles and SVG figures inline, "
        "nothing loaded from outside) with the per-stage statistics table, loss and rewards "
        "per stage, best-of-n curves with the n/(n+1) win-rate ceiling and the measured win "
        "rate, length bias, zero-variance prompts and what --min-reward left out. "
        "OUT.png/.svg/.pdf: the figure of the loss (stages where it rose are marked) and the "
        "selected vs mean reward per stage. Needs matplotlib: pip install "
        "'raft-polars[plot]'. An existing OUT is replaced.",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        type=_output_name,
        help="report file: .html, or a figure: .png, .svg or .pdf",
    )
    p.add_argument("--title", help="figure title (default: the log's path)")
    p.set_defaults(run=_cmd_report)

    p = commands.add_parser(
        "generate",
        help="write a deterministic synthetic stage log",
        description="Write a synthetic stage log into the new or empty directory OUT: nested "
        "layout OUT/part-*.parquet, or long layout OUT/tokens/ and OUT/rewards/. The same "
        "options give byte-identical files. A progress bar is drawn on stderr when it is a "
        "terminal.",
    )
    p.add_argument("out", metavar="OUT", help="output directory (new or empty)")
    p.add_argument(
        "--layout",
        choices=("nested", "long"),
        default="nested",
        help="nested: one row per candidate; long: token rows plus a rewards table",
    )
    p.add_argument("--stages", type=int, default=4, help="stages (default: 4)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per stage (default: 64)")
    p.add_argument("--k", type=int, default=4, help="candidates per prompt (default: 4)")
    p.add_argument("--min-tokens", type=int, default=1, help="shortest response (default: 1)")
    p.add_argument("--max-tokens", type=int, default=64, help="longest response (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--payload", action="store_true", help="also write prompt_text and response text columns"
    )
    p.add_argument(
        "--chunk-prompts", type=int, default=4096, help="prompts per file (default: 4096)"
    )
    p.set_defaults(run=_cmd_generate)
    return parser


def _log_options() -> _Parser:
    group = _Parser(add_help=False)
    group.add_argument(
        "path",
        nargs="+",
        metavar="PATH",
        help="the stage log: Parquet file(s), a directory (Hive partitions allowed) or a glob; "
        "the nested layout (a logprobs list per candidate), or the token rows of the long "
        "layout together with --rewards",
    )
    group.add_argument(
        "--rewards",
        metavar="PATH",
        help="long layout: the candidate rows (stage, prompt, cand, reward)",
    )
    group.add_argument(
        "--column",
        action="append",
        type=_column_pair,
        default=[],
        metavar="CANONICAL=THEIRS",
        help="the log names a canonical column differently, e.g. --column prompt=prompt_id "
        f"(repeatable; canonical names: {', '.join(CANONICAL_COLUMNS)})",
    )
    group.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr (shown only when stderr is a terminal)",
    )
    group.add_argument(
        "--preset",
        choices=("verl", "trl", "openrlhf", "rlhflow"),
        help="the column names of that pipeline's dumps (see docs/cli.md); --column wins",
    )
    return group


def _select_options(p: argparse.ArgumentParser) -> None:
    """The options of ``select``."""
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        type=_output_name,
        help="output file, Parquet (.parquet, .pq) or JSON lines (.jsonl, .ndjson)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stage", type=int, metavar="N", help="export stage N only")
    which.add_argument("--last-stage", action="store_true", help="export the last stage only")
    p.add_argument(
        "--format",
        dest="export_format",
        choices=EXPORT_FORMATS,
        default="rows",
        help="the columns written (default: rows)",
    )
    p.add_argument(
        "--prompt-column",
        metavar="COL",
        help="the prompt text column (default: prompt_text, input or question, else a "
        "string prompt id); with --format rows, also emit a 'prompt' copy of COL",
    )
    p.add_argument(
        "--response-column",
        metavar="COL",
        help="the response text column (default: response, responses, output, completion "
        "or text); with --format rows, also emit a 'completion' copy of COL",
    )
    p.add_argument(
        "--min-margin",
        type=float,
        metavar="M",
        help="--format dpo: skip the pairs whose chosen and rejected rewards differ by less than M",
    )


def _selection_options() -> _Parser:
    group = _Parser(add_help=False)
    opts = group.add_argument_group("selection (default: best-of-K per prompt)")
    opts.add_argument(
        "--strategy",
        choices=("best", "top_n", "global"),
        default="best",
        help="best: the best candidate of each prompt; top_n: the --n best of "
        "each prompt; global: the top --fraction of a stage's candidates",
    )
    opts.add_argument(
        "--n",
        type=_count,
        default=1,
        metavar="N",
        help="candidates kept per prompt with --strategy top_n",
    )
    opts.add_argument(
        "--fraction",
        type=_fraction,
        metavar="F",
        help="share of a stage's candidates kept with --strategy global, in (0, 1]",
    )
    opts.add_argument(
        "--min-reward",
        type=_finite,
        metavar="R",
        help="drop selected candidates whose reward is below R (any strategy)",
    )
    opts.add_argument(
        "--bad-rewards",
        choices=("error", "skip"),
        default="error",
        help="error (default): a null, NaN or infinite reward is bad input; skip: leave such "
        "candidates out, counted per stage (skipped, skipped_prompts)",
    )
    return group


def _table_options() -> _Parser:
    group = _Parser(add_help=False)
    group.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="output format (default: an aligned table)",
    )
    return group


def _reduction_options() -> _Parser:
    group = _Parser(add_help=False)
    group.add_argument(
        "--reduction",
        choices=("token", "sequence"),
        default="token",
        help="token: pooled token mean (default, as HF/TRL SFT); "
        "sequence: mean of per-response means",
    )
    return group


def _engine_options() -> _Parser:
    group = _Parser(add_help=False)
    opts = group.add_argument_group("engine")
    opts.add_argument(
        "--engine",
        choices=("polars", "dask"),
        default="polars",
        help="polars (default, this machine) or dask (needs raft-polars[dask])",
    )
    opts.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask: address of a running scheduler (default: a local cluster)",
    )
    opts.add_argument(
        "--workers", type=_count, metavar="N", help="dask: workers of the local cluster"
    )
    return group


def _column_pair(text: str) -> tuple[str, str]:
    canonical, sep, theirs = text.partition("=")
    canonical, theirs = canonical.strip(), theirs.strip()
    if not sep or not canonical or not theirs:
        msg = f"expected CANONICAL=THEIRS, e.g. prompt=prompt_id, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if canonical not in CANONICAL_COLUMNS:
        names = ", ".join(CANONICAL_COLUMNS)
        msg = f"unknown canonical column {canonical!r}; canonical names: {names}"
        raise argparse.ArgumentTypeError(msg)
    return canonical, theirs


def _output_name(text: str) -> str:
    if not text:  # an unset variable: not "." (Path("") is the working directory)
        msg = "an empty path: name the file to write"
        raise argparse.ArgumentTypeError(msg)
    return text


def _fraction(text: str) -> float:
    value = _finite(text)
    if not 0.0 < value <= 1.0:
        msg = f"expected a share in (0, 1], got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        msg = f"expected a finite number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _count(text: str, *, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        msg = f"expected a whole number >= {least}, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _limit(text: str) -> int:
    """``--limit``: 0 lists no locations (the counts only), as ``limit=0`` does."""
    return _count(text, least=0)


# --- options shared by the data commands ---------------------------------------------


def _source(args: argparse.Namespace) -> Source:
    paths: list[str] = args.path
    return paths[0] if len(paths) == 1 else paths


def _columns(args: argparse.Namespace) -> dict[str, str] | None:
    pairs: list[tuple[str, str]] = args.column
    mapping: dict[str, str] = {}
    for canonical, theirs in pairs:
        if mapping.get(canonical, theirs) != theirs:
            msg = f"--column {canonical}= is given twice ({mapping[canonical]!r} and {theirs!r})"
            raise UsageError(msg)
        other = next((c for c, t in mapping.items() if t == theirs and c != canonical), None)
        if other is not None:
            msg = (
                f"--column {other}={theirs} and --column {canonical}={theirs} name the same "
                f"column {theirs!r}; a column can stand for only one of them"
            )
            raise UsageError(msg)
        mapping[canonical] = theirs
    return mapping or None


def _log_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"rewards": args.rewards, "columns": _columns(args), "preset": args.preset}


def _selection_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.strategy == "global" and args.fraction is None:
        msg = "--strategy global needs --fraction F (the share of a stage's candidates kept)"
        raise UsageError(msg)
    if args.strategy != "global" and args.fraction is not None:
        msg = f"--fraction applies to --strategy global only, not {args.strategy}"
        raise UsageError(msg)
    if args.strategy != "top_n" and args.n != 1:
        msg = f"--n applies to --strategy top_n only, not {args.strategy}"
        raise UsageError(msg)
    return {
        "strategy": args.strategy,
        "n": args.n,
        "fraction": args.fraction,
        "min_reward": args.min_reward,
        "bad_rewards": args.bad_rewards,
    }


def _engine(args: argparse.Namespace) -> Any:
    """The ``engine=`` of the API for ``--engine`` (and ``--scheduler`` / ``--workers``)."""
    if args.engine != "dask":
        if args.scheduler is not None or args.workers is not None:
            msg = "--scheduler and --workers need --engine dask"
            raise UsageError(msg)
        return "polars"
    if args.scheduler is None and args.workers is None:
        return "dask"
    try:
        from raft_polars.dask import DaskEngine
    except ImportError as exc:
        msg = (
            f"--engine dask needs the distributed engine ({exc}); install it with: "
            "pip install 'raft-polars[dask]'"
        )
        raise MissingDependencyError(msg) from exc
    return DaskEngine(scheduler=args.scheduler, workers=args.workers)


# --- losses ------------------------------------------------------------------------


def _cmd_losses(args: argparse.Namespace) -> None:
    from raft_polars.api import stage_losses

    table = stage_losses(
        _source(args),
        **_log_kwargs(args),
        reduction=args.reduction,
        **_selection_kwargs(args),
        engine=_engine(args),
    )
    write_losses(table, sys.stdout, fmt=args.format)


def write_losses(table: pl.DataFrame, stream: TextIO, *, fmt: str = "table") -> None:
    """Print a :func:`~raft_polars.stage_losses` table as the CLI does.

    The loss is rounded with Python's ``round(x, 4)`` in every format; the aligned
    table shows every float with 4 decimals, CSV and JSON keep the rewards exact.
    JSON, which has no NaN or infinity, gets the strings ``"nan"``, ``"inf"`` and
    ``"-inf"`` for them (an overflowing NLL sum is an infinite loss).

    Examples
    --------
    >>> import sys
    >>> import polars as pl
    >>> from raft_polars import stage_losses
    >>> log = pl.DataFrame({"stage": [0, 0, 1, 1], "prompt": [0, 0, 0, 0],
    ...                     "cand": [0, 1, 0, 1], "reward": [0.2, 0.4, 0.75, 0.7],
    ...                     "logprobs": [[-2.0, -1.8], [-1.5, -1.6], [-0.6, -0.5], [-0.7]]})
    >>> write_losses(stage_losses(log), sys.stdout)  # doctest: +NORMALIZE_WHITESPACE
    stage loss   prompts candidates selected tokens reward_best_mean reward_mean reward_lift ties below_min
        0 1.5500       1          2        1      2           0.4000      0.3000      0.1000    0         0
        1 0.5500       1          2        1      2           0.7500      0.7250      0.0250    0         0
    """  # noqa: E501 - the doctest shows the full-width table
    extra = [c for c in ("skipped", "skipped_prompts") if c in table.columns]
    write_table(table.select(*LOSS_COLUMNS, *extra), stream, fmt=fmt)


def write_table(table: pl.DataFrame, stream: TextIO, *, fmt: str = "table") -> None:
    """Print any per-stage table (losses, statistics, best-of-n) as the CLI does:
    an aligned table (floats to 4 decimals, from 1e15 on as ``1.2345e+15``), CSV or
    JSON; a ``loss`` column is rounded with Python's ``round(x, 4)`` in every
    format; JSON writes NaN and infinities as the strings ``"nan"``, ``"inf"`` and
    ``"-inf"``."""
    names = table.columns
    rows = [_rounded(row) for row in table.iter_rows(named=True)]
    if fmt == "json":
        rows = [{k: json_value(v) for k, v in row.items()} for row in rows]
        json.dump(rows, stream, indent=2, allow_nan=False)
        stream.write("\n")
    elif fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        cells = [[table_cell(row[c]) for c in names] for row in rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(names)]
        stream.write(" ".join(c.ljust(w) for c, w in zip(names, widths, strict=True)).rstrip())
        stream.write("\n")
        for r in cells:
            stream.write(" ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) + "\n")


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("loss") is not None:
        row["loss"] = round(row["loss"], 4)
    return row


# --- select ------------------------------------------------------------------------


def _cmd_select(args: argparse.Namespace) -> None:
    from raft_polars.api import write_selected

    out = Path(args.output)
    stage: int | Literal["last"] | None = "last" if args.last_stage else args.stage
    rows = write_selected(
        _source(args),
        out,
        **_log_kwargs(args),
        **_selection_kwargs(args),
        stage=stage,
        format=args.export_format,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        min_margin=args.min_margin,
        force=args.force,
        engine=_engine(args),
    )
    with _written(out):
        if rows.format == "dpo":
            print(f"wrote {rows} preference pair(s) to {out}")
            print(f"skipped {rows.skipped_equal} prompt(s) whose best and worst rewards are equal")
            if args.min_margin is not None:
                margin = args.min_margin
                print(f"skipped {rows.skipped_margin} pair(s) closer than --min-margin {margin}")
        elif rows.format == "wide":
            print(f"wrote {rows} prompt(s) to {out}")
        else:
            print(f"wrote {rows} selected response(s) to {out}")


# --- validate ----------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> None:
    from raft_polars.validation import validate

    report = validate(
        _source(args),
        **_log_kwargs(args),
        **_selection_kwargs(args),
        limit=args.limit,
        engine=_engine(args),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        print(report.format())
    if not report.ok:
        raise ProblemsFound


# --- report ------------------------------------------------------------------------


def _cmd_report(args: argparse.Namespace) -> None:
    out = Path(args.output)
    fmt = out.suffix.lower()
    if fmt not in (*_FIGURE, ".html"):
        msg = f"the figure must be .png, .svg or .pdf (the report .html), got {str(out)!r}"
        raise UsageError(msg)
    from raft_polars._export import check_target, write_atomically

    check_target(out, force=True)
    from raft_polars.api import best_of_n, stage_losses, stage_stats
    from raft_polars.report import html_report, report_figure, save_figure

    title = args.title if args.title is not None else " ".join(args.path)
    options = {**_log_kwargs(args), "reduction": args.reduction, **_selection_kwargs(args)}
    if fmt == ".html":
        table = stage_stats(_source(args), **options, engine=_engine(args))
        curves = best_of_n(
            _source(args), **_log_kwargs(args), bad_rewards=args.bad_rewards, engine=_engine(args)
        )
        page = html_report(
            table, curves, title=title, source=" ".join(args.path), reduction=args.reduction
        )

        def write(tmp: Path) -> None:
            tmp.write_text(page, encoding="utf-8")
    else:
        table = stage_losses(_source(args), **options, engine=_engine(args))
        figure = report_figure(table, title=title, reduction=args.reduction)

        def write(tmp: Path) -> None:
            save_figure(figure, tmp, fmt=fmt[1:])

    write_atomically(out, write, force=True)
    with _written(out):
        print(f"wrote {out} ({table.height} stage(s))")


# --- stats -------------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace) -> None:
    from raft_polars._export import (
        check_not_input,
        check_target,
        output_format,
        sink_parquet,
        write_atomically,
    )
    from raft_polars.api import best_of_n, prompt_stats, stage_stats

    source, engine = _source(args), _engine(args)
    if args.per_prompt or args.best_of_n:
        # (their defaults, table and token, are as good as not given)
        which = "--per-prompt" if args.per_prompt else "--best-of-n"
        if args.reduction != "token":
            msg = f"--reduction applies to the per-stage table, not {which}"
            raise UsageError(msg)
        chosen = args.strategy != "best" or args.n != 1 or args.fraction is not None
        if args.best_of_n and (chosen or args.min_reward is not None):
            msg = (
                "--best-of-n reads every candidate, whatever is selected: --strategy, --n, "
                "--fraction and --min-reward do not apply to it"
            )
            raise UsageError(msg)
        if args.per_prompt and args.format != "table":
            msg = "--format applies to printed tables; --per-prompt writes OUT's format"
            raise UsageError(msg)
    if args.force and not args.per_prompt:
        msg = "--force goes with --per-prompt -o OUT"
        raise UsageError(msg)
    if args.per_prompt:
        if args.output is None:
            msg = "--per-prompt writes a file: give -o OUT (.parquet or .jsonl)"
            raise UsageError(msg)
        out = Path(args.output)
        fmt = output_format(out)
        check_target(out, force=args.force)
        specs = local_specs(source) + local_specs(args.rewards)
        check_not_input(out, local_files(source) + local_files(args.rewards), specs)
        table = prompt_stats(source, **_log_kwargs(args), **_selection_kwargs(args), engine=engine)
        if args.status is not None:
            table = table.filter(pl.col("status") == args.status)

        def write(tmp: Path) -> None:
            if fmt == "parquet":
                sink_parquet(table, tmp)
            else:
                json_lines(table.lazy(), tmp, out)

        write_atomically(out, write, force=args.force)
        with _written(out):
            print(f"wrote {table.height} prompt row(s) to {out}")
        return
    if args.output is not None or args.status is not None:
        msg = "-o and --status go with --per-prompt"
        raise UsageError(msg)
    if args.best_of_n:
        curves = best_of_n(source, **_log_kwargs(args), bad_rewards=args.bad_rewards, engine=engine)
        write_table(curves, sys.stdout, fmt=args.format)
        return
    table = stage_stats(
        source,
        **_log_kwargs(args),
        reduction=args.reduction,
        **_selection_kwargs(args),
        engine=engine,
    )
    write_table(table, sys.stdout, fmt=args.format)


# --- generate ----------------------------------------------------------------------


_GENERATE_OPTIONS = ("stages", "prompts", "k", "min_tokens", "max_tokens", "seed", "chunk_prompts")


def _option_names(message: str) -> str:
    """``message`` of :func:`~raft_polars.synth.generate` with its parameters as
    the options that set them (``max_tokens`` -> ``--max-tokens``)."""
    names = "|".join(_GENERATE_OPTIONS)
    return re.sub(rf"\b({names})\b(?= must| \()", lambda m: "--" + m[1].replace("_", "-"), message)


def _cmd_generate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    from raft_polars.synth import generate

    bar = _ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        paths = generate(
            args.out,  # as given: an empty one is an error, not "."
            layout=args.layout,
            stages=args.stages,
            prompts=args.prompts,
            k=args.k,
            min_tokens=args.min_tokens,
            max_tokens=args.max_tokens,
            seed=args.seed,
            payload=args.payload,
            chunk_prompts=args.chunk_prompts,
            progress=bar,
        )
    except BaseException as exc:  # a failed run leaves no half-written log behind
        if isinstance(exc, RaftInputError):  # the options by their names here
            raise UsageError(_option_names(str(exc))) from exc
        reason = write_failure(exc)
        if reason is not None:  # a full disk: the output's, named
            msg = f"cannot write {str(out)!r}: {reason}"
            raise UsageError(msg) from exc
        raise
    finally:
        if bar is not None:
            bar.close()
    with _written(out):
        print(
            f"wrote {len(paths)} file(s) to {out} ({args.layout} layout: {args.stages} stage(s) "
            f"x {args.prompts} prompt(s) x {args.k} candidate(s))"
        )


class _ProgressBar:
    """``progress(done, total)`` drawn as one rewritten line on a terminal."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        filled = round(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\rgenerating [{bar}] {share:4.0%} {done:,}/{total:,} tokens")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
