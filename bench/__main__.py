"""Runs one benchmark: `python -m bench <name> [options]`; `python -m bench` lists them.

A benchmark is a module `bench/<name>.py` with a `main(argv) -> dict` that prints
human-readable lines and returns its figures. This runner prints those figures as the last
line of output, one JSON object with `"bench": "<name>"`, so scripts can read the result with
`tail -n 1`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import cast

import bench

BenchmarkMain = Callable[[Sequence[str]], Mapping[str, object]]


def available() -> dict[str, str]:
    """Benchmark names and the first line of each one's docstring."""
    found: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda info: info.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if callable(getattr(module, "main", None)):
            doc = (module.__doc__ or "").strip()
            found[info.name] = doc.splitlines()[0] if doc else ""
    return found


def _load(name: str) -> BenchmarkMain | None:
    if name.startswith("_") or not name.isidentifier():
        return None
    try:
        module: ModuleType = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"bench.{name}":
            return None
        raise
    entry = getattr(module, "main", None)
    return cast(BenchmarkMain, entry) if callable(entry) else None


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m bench <name> [options]   (<name> --help for its options)")
        print("benchmarks:")
        for name, summary in available().items():
            print(f"  {name:<12} {summary}")
        return 0
    name, options = argv[0], argv[1:]
    benchmark = _load(name)
    if benchmark is None:
        print(f"no benchmark named {name!r}; run `python -m bench` for the list", file=sys.stderr)
        return 2
    figures = benchmark(options)
    print(json.dumps({"bench": name, **figures}, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
