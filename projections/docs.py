"""Keep the README's rules table generated from `projections.rules` (`make docs`)."""

from __future__ import annotations

import sys
from pathlib import Path

from projections.rules import markdown_table

START, END = "<!-- rules:start -->", "<!-- rules:end -->"


def with_rules_table(readme: str) -> str:
    """The README text with the block between the markers replaced by the current table."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


def main(path: str = "README.md") -> int:
    """Rewrite the README in place; with --check, exit 1 when it is stale."""
    readme = Path(path)
    current = readme.read_text(encoding="utf-8")
    fresh = with_rules_table(current)
    if "--check" in sys.argv:
        return 0 if fresh == current else 1
    readme.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
