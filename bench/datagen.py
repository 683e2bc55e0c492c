"""Deterministic benchmark data, written once with the package's own generator.

Each data set lives in its own directory under the data root (default
``/work/bench_data``, outside the repository) with a ``manifest.json`` written last:
a directory is reused only when its manifest matches the requested shape and every
file it lists is still there with the same size; otherwise it is regenerated.

Layout of the data root::

    small/nested/part-s0000-c0000.parquet ...       nested layout
    small/long/tokens/... small/long/rewards/...    long layout
    small/long_str/tokens/... .../rewards/...       long layout, prompt ids as strings
    large/nested/... large/long/...
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import polars as pl

from raft_polars.synth import generate

# the shapes of issue 3: 8 stages x prompts x K = 8 x 16-512 tokens (uniform)
SIZES: dict[str, dict[str, int]] = {
    "small": {"stages": 8, "prompts": 4_096, "k": 8, "min_tokens": 16, "max_tokens": 512},
    "large": {"stages": 8, "prompts": 40_960, "k": 8, "min_tokens": 16, "max_tokens": 512},
}
# the list API case: 4 stages x 1,000 prompts x K = 8 x 1-128 tokens (~2M tokens)
LIST_SHAPE = {"stages": 4, "prompts": 1_000, "k": 8, "min_tokens": 1, "max_tokens": 128}
SEED = 0
CHUNK_PROMPTS = 4_096
_FORMAT = 1  # bump when the way data is written changes


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*.parquet"))}


def _matches(root: Path, spec: dict[str, object]) -> bool:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        found = json.loads(manifest.read_text())
    except ValueError:
        return False
    if found.get("spec") != spec:
        return False
    files = found.get("files", {})
    return bool(files) and files == _files(root)


def _write_manifest(root: Path, spec: dict[str, object], seconds: float) -> None:
    files = _files(root)
    body = {
        "spec": spec,
        "files": files,
        "bytes": sum(files.values()),
        "generated_in_s": round(seconds, 1),
        "polars": pl.__version__,
    }
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(root / "manifest.json")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure(data_root: Path, size: str, layout: str) -> Path:
    """The directory of one data set, generated now unless a matching one exists.

    ``layout`` is ``"nested"``, ``"long"`` or ``"long_str"`` (the long layout with
    the prompt ids cast to strings, derived from the integer one).
    """
    shape = SIZES[size]
    root = data_root / size / layout
    spec: dict[str, object] = {
        "format": _FORMAT,
        "layout": layout,
        "seed": SEED,
        "chunk_prompts": CHUNK_PROMPTS,
        **shape,
    }
    if _matches(root, spec):
        return root
    if layout == "long_str":
        source = ensure(data_root, size, "long")
        _log(f"[data] writing {root} (prompt ids cast to strings) ...")
        start = time.perf_counter()
        if root.exists():
            shutil.rmtree(root)
        for part in sorted(source.rglob("*.parquet")):
            target = root / part.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            (
                pl.scan_parquet(part)
                .with_columns(pl.col("prompt").cast(pl.String))
                .sink_parquet(target, statistics=True)
            )
        _write_manifest(root, spec, time.perf_counter() - start)
        return root
    _log(f"[data] generating {root}: {shape} seed={SEED} ...")
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 30:
            last[0] = now
            _log(f"[data]   {done / 1e6:,.0f}M / ~{total / 1e6:,.0f}M tokens")

    generate(
        root,
        layout=layout,
        seed=SEED,
        chunk_prompts=CHUNK_PROMPTS,  # type: ignore[arg-type]
        progress=progress,
        **shape,
    )
    seconds = time.perf_counter() - start
    _write_manifest(root, spec, seconds)
    _log(f"[data] {root} written in {seconds:.0f} s")
    return root


def paths(root: Path, layout: str) -> dict[str, str]:
    """Globs of a data set's files: ``tokens`` and ``rewards`` (long) or ``nested``."""
    if layout == "nested":
        return {"nested": str(root / "*.parquet")}
    return {
        "tokens": str(root / "tokens" / "*.parquet"),
        "rewards": str(root / "rewards" / "*.parquet"),
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="generate (or reuse) benchmark data")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--data", type=Path, default=Path("/work/bench_data"))
    parser.add_argument("--layout", choices=["nested", "long", "long_str"], action="append")
    args = parser.parse_args()
    for lay in args.layout or ["nested", "long"]:
        print(ensure(args.data, args.size, lay))
