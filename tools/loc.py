"""ember's line budget: count the logical lines of Python under a folder.

A logical line is one holding code; blank lines, comments and docstrings are free.
Exits 1 when the total passes --max or any line is wider than --width.
Usage: python tools/loc.py src/ember --max 2200 --width 100
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from pathlib import Path

FREE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
        tokenize.ENCODING, tokenize.ENDMARKER}


def docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def logical_lines(source: str) -> int:
    free = docstring_lines(ast.parse(source))
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in FREE:
            code.update(n for n in range(token.start[0], token.end[0] + 1) if n not in free)
    return len(code)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--max", type=int, default=2200)
    parser.add_argument("--width", type=int, default=100)
    args = parser.parse_args()
    total, ok = 0, True
    for path in sorted(args.folder.rglob("*.py")):
        source = path.read_text()
        count = logical_lines(source)
        total += count
        wide = [n for n, line in enumerate(source.splitlines(), 1) if len(line) > args.width]
        print(f"{count:5d}  {path}" + (f"  lines wider than {args.width}: {wide}" if wide else ""))
        ok = ok and not wide
    print(f"{total:5d}  logical lines in total (budget {args.max})")
    if total > args.max:
        print(f"over budget by {total - args.max}: simplify the design")
    return 0 if ok and total <= args.max else 1


if __name__ == "__main__":
    sys.exit(main())
