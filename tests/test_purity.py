"""The pure layers stay pure (DESIGN.md: "Keep tcp.py, protocols/ and mime.py free of
scapy, pandas and click imports"): they are functions of bytes, which is what makes them
testable, fast and reusable in live mode.

Checked twice: statically (every import statement, at any depth, of tcp.py, mime.py and
protocols/*.py, and what they import from the package), and by importing them all in a
fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "maildissect"

#: the pure layers
PURE = [PKG / "tcp.py", PKG / "mime.py", *sorted((PKG / "protocols").glob("*.py"))]
#: what the pure layers may use from the rest of the package: records, limits, names, text
SHARED = {"model", "config", "anomalies", "text"}
#: libraries of I/O, tables and the command line
FORBIDDEN = {"scapy", "pandas", "pyarrow", "click", "rich", "dask", "distributed", "pyshark"}


def imports(path: Path):
    """(absolute top-level names, package modules reached by relative imports) of a module."""
    tree = ast.parse(path.read_text())
    absolute, relative = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute.add(node.module.split(".")[0])
                continue
            here = path.parent.relative_to(PKG).parts[: len(path.parent.relative_to(PKG).parts) - (node.level - 1)]
            target = ".".join((*here, node.module)) if node.module else ".".join(here)
            if node.module:
                relative.add(target)
            else:  # "from .. import mime"
                relative |= {".".join((*here, alias.name)) for alias in node.names}
    return absolute, relative


def test_pure_modules_import_no_io_libraries():
    for path in PURE:
        absolute, relative = imports(path)
        assert not absolute & FORBIDDEN, (path.name, absolute & FORBIDDEN)
        if path.name != "tcp.py":  # tcp.py formats addresses with socket.inet_ntop
            assert "socket" not in absolute, path.name
        for target in relative:
            top = target.split(".")[0]
            assert target.startswith("protocols") or target in {"mime", "tcp"} or top in SHARED, \
                f"{path.relative_to(ROOT)} imports maildissect.{target}, which is not a pure layer"


def test_pure_modules_load_no_io_library():
    names = ["maildissect.tcp", "maildissect.mime"] + [
        f"maildissect.protocols.{p.stem}" for p in sorted((PKG / "protocols").glob("*.py")) if p.stem != "__init__"]
    code = ("import sys\n" + "".join(f"import {n}\n" for n in names)
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(FORBIDDEN)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
