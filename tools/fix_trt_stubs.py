"""Make the `tensorrt-stubs` package readable by mypy.

The published stubs (10.8 to 10.13) are generated from the pybind11 module and contain lines that
are not valid Python: parameters named `in`, and required parameters after defaulted ones. This
rewrites those lines in place (`in` -> `in_`; a defaulted parameter before a required one loses
its default) until every .pyi file parses. Usage: python tools/fix_trt_stubs.py STUBS_DIR
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path


def fix_line(line: str) -> str:
    line = re.sub(r"([(,]\s*)in:", r"\1in_:", line)
    m = re.match(r"(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not m:
        return line
    params = [p.strip() for p in m.group(2).split(",")]
    # From the last required parameter backwards, earlier defaults must go.
    last_required = max((i for i, p in enumerate(params) if "=" not in p and not p.startswith("*")), default=-1)
    params = [p.split("=")[0].rstrip() if i < last_required else p for i, p in enumerate(params)]
    return m.group(1) + ", ".join(params) + m.group(3)


def fix_file(path: Path) -> int:
    lines = path.read_text().splitlines()
    fixed = 0
    for _ in range(1000):
        try:
            ast.parse("\n".join(lines))
            break
        except SyntaxError as e:
            i = (e.lineno or 1) - 1
            new = fix_line(lines[i])
            if new == lines[i]:
                raise SystemExit(f"{path}:{e.lineno}: cannot fix: {lines[i].strip()[:120]}") from None
            lines[i] = new
            fixed += 1
    path.write_text("\n".join(lines) + "\n")
    return fixed


if __name__ == "__main__":
    root = Path(sys.argv[1])
    total = sum(fix_file(p) for p in sorted(root.rglob("*.pyi")))
    print(f"fixed {total} line(s) in the TensorRT stubs under {root}")
