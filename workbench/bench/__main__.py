"""Dispatch ``python -m workbench.bench <name> [args]`` to ``workbench/bench/<name>.py:main(argv)``.

Subcommands are found by module name, so adding a benchmark means adding a module, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import workbench.bench


def subcommands() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(workbench.bench.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    names = subcommands()
    if not argv or argv[0] not in names:
        print(f"usage: python -m workbench.bench {{{','.join(names)}}} [args]  (--help after a name for its options)",
              file=sys.stderr)
        sys.exit(2)
    importlib.import_module(f"workbench.bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main()
