"""The real TensorRT Python API of every version tldeploy supports, without TensorRT's libraries.

NVIDIA's bindings wheels (`tensorrt-cu12-bindings`, about 1 MB each) install from the package
index; the libraries they link (`libnvinfer.so.N`, `libnvinfer_plugin.so.N`,
`libnvonnxparser.so.N`) do not, here. At import the bindings need only a handful of C entry points
from those libraries (`createInferBuilder_INTERNAL`, `getPluginRegistry`, ...), so stand-in
libraries that define them (each returning null) let the real `tensorrt_bindings` import: its
enums, classes and pybind11 signatures can be read, and stubs generated from them. Nothing of
NVIDIA's is committed: this tool downloads the wheels, as `make typecheck` runs it.

    python tools/trt_api.py prepare DIR              bindings, stand-ins and stubs under DIR/<version>/
    python tools/trt_api.py typecheck DIR [FILE...]  mypy on FILEs against each version's stubs
    python tools/trt_api.py check DIR [FILE...]      every trt.<name> the FILEs use exists in each version

FILEs default to the TensorRT-facing code: every module under tldeploy/ and benchmarks/ that imports
tensorrt, and benchmarks/trt_*.py. Nothing here runs a TensorRT function: the stand-ins would return
null. What the bindings compute stays unverified until a machine with TensorRT and a GPU runs
`benchmarks/trt_digits.py`.
"""

from __future__ import annotations

import ast
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tensorrt-cu12-bindings"  # the cu12 wheels cover 10.x and 11.x alike
# Oldest supported (JetPack 6.1/6.2 on Jetson Orin), the newest without
# HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY (10.9 added it), newest 10.x, newest 11.x.
# Each is a ~1 MB download and ~10 s of mypy.
VERSIONS = {"10.3": "10.3.0", "10.8": "10.8.0.43", "10.16": "10.16.1.11", "11.4": "11.4.0.106"}
STUBGEN = "pybind11-stubgen==2.5.5"
NV_LIBRARIES = ("libnvinfer.so", "libnvinfer_plugin.so", "libnvonnxparser.so")


# ---------------------------------------------------------------- prepare


def prepare(root: Path, versions: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    stubgen = root / "_stubgen"
    if not (stubgen / "pybind11_stubgen").is_dir():
        _pip_target(stubgen, STUBGEN)
    for v in versions:
        base = root / v
        full = VERSIONS[v]
        stamp = f"{full} {hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}"  # remade when this tool changes
        if (base / "stubs" / "tensorrt" / "__init__.pyi").is_file() and _read(base / "STAMP") == stamp:
            print(f"TensorRT {full}: ready in {base}")
            continue
        shutil.rmtree(base, ignore_errors=True)
        _pip_target(base / "site", f"{PACKAGE}=={full}")
        build_standins(base)
        env = binding_env(root, v)
        probe = subprocess.run([sys.executable, "-c", "import tensorrt_bindings as t; print(t.__version__)"],
                               env=env, capture_output=True, text=True)
        if probe.returncode != 0 or probe.stdout.strip() != full:
            raise SystemExit(f"TensorRT {full}: the bindings did not import over the stand-ins:\n{probe.stderr[-2000:]}")
        write_stubs(base, env, stubgen)
        (base / "VERSION").write_text(full)
        (base / "STAMP").write_text(stamp)
        print(f"TensorRT {full}: bindings, stand-in libraries and stubs in {base}")


def _pip_target(target: Path, requirement: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(target), requirement]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"could not install {requirement} (needs the package index): {run.stderr.strip()[-600:]}")


def _read(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def extension(base: Path) -> Path:
    found = sorted((base / "site" / "tensorrt_bindings").glob("tensorrt*.so"))
    if not found:
        raise SystemExit(f"no tensorrt*.so under {base / 'site' / 'tensorrt_bindings'}")
    return found[0]


def needed_libraries(so: Path) -> list[str]:
    """The NVIDIA libraries the extension links (its ELF NEEDED entries)."""
    out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    return [n for n in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out) if n.startswith(NV_LIBRARIES)]


def missing_symbols(so: Path) -> list[str]:
    """Undefined functions of the extension that neither Python nor the C and C++ runtimes
    provide: the entry points TensorRT's libraries export."""
    out = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True, check=True).stdout
    process = ctypes.CDLL(None)
    names = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U" or "@" in parts[1]:
            continue
        name = parts[1]
        if name.startswith(("_", "Py")) or hasattr(process, name):
            continue
        names.append(name)
    return sorted(set(names))


def build_standins(base: Path) -> None:
    so = extension(base)
    symbols = missing_symbols(so)
    lib = base / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    source = lib / "standin.c"
    source.write_text(
        "/* Stand-ins for TensorRT's C entry points: defined so the bindings import; each returns null. */\n"
        + "".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols)
    )
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler (cc or gcc) to build the stand-in libraries")
    for name in needed_libraries(so):
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib / name), f"-Wl,-soname,{name}", str(source)], check=True)
    (lib / "symbols.txt").write_text("\n".join(symbols) + "\n")


def binding_env(root: Path, version: str) -> dict[str, str]:
    """An environment in which `import tensorrt_bindings` loads that version over its stand-ins."""
    base = root / version
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(base / "lib"), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(base / "site"), str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


# Classes of the module that implement the buffer protocol (pybind11's py::buffer_protocol(), as
# IHostMemory does): read from each type's tp_as_buffer slot, which stubgen cannot see. CPython's
# PyTypeObject layout puts tp_as_buffer after 20 pointer-sized fields; bf_getbuffer is its first.
_BUFFERS = r"""
import ctypes, inspect, json
import tensorrt_bindings.tensorrt as m
def has_buffer(cls):
    slot = ctypes.c_void_p.from_address(id(cls) + 20 * ctypes.sizeof(ctypes.c_void_p)).value
    return bool(slot) and bool(ctypes.c_void_p.from_address(slot).value)
assert has_buffer(bytes) and has_buffer(memoryview) and not has_buffer(int) and not has_buffer(object)
print(json.dumps(sorted(n for n, c in vars(m).items() if inspect.isclass(c) and has_buffer(c))))
"""


def buffer_classes(env: dict[str, str]) -> list[str]:
    run = subprocess.run([sys.executable, "-c", _BUFFERS], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"could not read the bindings' buffer types: {run.stderr[-2000:]}")
    return json.loads(run.stdout)


def add_buffer_methods(pyi: Path, classes: list[str]) -> None:
    """`__buffer__` for the classes that implement the buffer protocol, so bytes(x) and
    memoryview(x) type-check as they run."""
    text = pyi.read_text()
    for name in classes:
        text, n = re.subn(rf"^(class {name}\b[^\n]*:\n)", r"\1    def __buffer__(self, flags: int, /) -> memoryview: ...  # buffer protocol\n",
                          text, flags=re.M)
        if n != 1:
            raise SystemExit(f"{pyi}: no class {name} to give __buffer__")
    pyi.write_text(text)


def write_stubs(base: Path, env: dict[str, str], stubgen: Path) -> None:
    """Stubs of `tensorrt_bindings`, written as the `tensorrt` package our code imports."""
    raw = base / "stubs-raw"
    env = {**env, "PYTHONPATH": os.pathsep.join((env["PYTHONPATH"], str(stubgen)))}
    run = subprocess.run([sys.executable, "-m", "pybind11_stubgen", "tensorrt_bindings", "-o", str(raw), "--ignore-all-errors"],
                         env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"pybind11-stubgen failed: {run.stderr[-2000:]}")
    out = base / "stubs" / "tensorrt"
    for pyi in sorted((raw / "tensorrt_bindings").rglob("*.pyi")):
        target = out / pyi.relative_to(raw / "tensorrt_bindings")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(re.sub(r"\btensorrt_bindings\b", "tensorrt", pyi.read_text()))
        fix_file(target)
    add_buffer_methods(out / "tensorrt.pyi", buffer_classes(env))
    shutil.rmtree(raw)


def fix_line(line: str) -> str:
    """pybind11 signatures that are not Python: parameters named `in`; required parameters after
    defaulted ones (the defaults before the last required parameter go)."""
    line = re.sub(r"([(,]\s*)in:", r"\1in_:", line)
    m = re.match(r"(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not m:
        return line
    params = [p.strip() for p in m.group(2).split(",")]
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


# ---------------------------------------------------------------- the code that uses TensorRT


def tensorrt_files() -> list[Path]:
    """Every module under tldeploy/ and benchmarks/ that imports tensorrt, and benchmarks/trt_*.py."""
    found = set(ROOT.glob("benchmarks/trt_*.py"))
    for path in [*ROOT.glob("tldeploy/**/*.py"), *ROOT.glob("benchmarks/*.py")]:
        if _tensorrt_aliases(ast.parse(path.read_text())):
            found.add(path)
    return sorted(found)


def _tensorrt_aliases(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
    return names


@dataclass(frozen=True)
class Reference:
    path: str  # dotted, below the module: "BuilderFlag.VERSION_COMPATIBLE"
    where: str  # file:line
    optional: bool = False  # a feature probe (getattr/hasattr with a default): may be missing in some versions


def _chain(node: ast.AST, aliases: set[str]) -> str | None:
    """"A.B" for the expression trt.A.B, None for anything not rooted at the tensorrt module."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases and parts:
        return ".".join(reversed(parts))
    return None


def _probe(node: ast.AST, aliases: set[str]) -> str | None:
    """"A.B" for getattr(trt.A, "B", ...) or hasattr(trt.A, "B"), None for any other expression."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        return None
    base = node.args[0]
    if isinstance(base, ast.Name) and base.id in aliases:
        return node.args[1].value
    prefix = _chain(base, aliases)
    return f"{prefix}.{node.args[1].value}" if prefix else None


def references(files: list[Path]) -> list[Reference]:
    """Every `trt.A.B...` our code reads (the longest chains), and the names it probes with
    getattr(trt.A, "B", ...) or hasattr(trt.A, "B")."""
    refs: list[Reference] = []
    for path in files:
        tree = ast.parse(path.read_text())
        aliases = _tensorrt_aliases(tree)
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        chains = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (c := _chain(node, aliases)):
                chains[node] = c
            if p := _probe(node, aliases):
                refs.append(Reference(p, f"{rel}:{node.lineno}", optional=True))
        inner = {id(n.value) for n in chains if isinstance(n.value, ast.Attribute)}
        refs += [Reference(c, f"{rel}:{n.lineno}") for n, c in chains.items() if id(n) not in inner]
    return refs


_RESOLVE = r"""
import json, sys
import tensorrt_bindings as trt
out = {}
for path in json.loads(sys.argv[1]):
    obj, ok = trt, True
    for part in path.split("."):
        if not hasattr(obj, part):
            ok = False
            break
        obj = getattr(obj, part)
    out[path] = ok
print(json.dumps({"version": trt.__version__, "present": out}))
"""


def resolve(root: Path, version: str, paths: list[str]) -> dict[str, bool]:
    """Which of `paths` (dotted, below the module) the real bindings of `version` have."""
    run = subprocess.run([sys.executable, "-c", _RESOLVE, json.dumps(sorted(set(paths)))], env=binding_env(root, version),
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"TensorRT {version}: {run.stderr[-2000:]}")
    return json.loads(run.stdout)["present"]


def check(root: Path, versions: list[str], files: list[Path]) -> list[str]:
    """Problems: a name our code reads that a supported version lacks, or a probed name that no
    supported version has (a dead branch)."""
    refs = references(files)
    present = {v: resolve(root, v, [r.path for r in refs]) for v in versions}
    problems = []
    for r in refs:
        lacking = [VERSIONS[v] for v in versions if not present[v][r.path]]
        if r.optional and len(lacking) == len(versions):
            problems.append(f"{r.where}: probes trt.{r.path}, which no supported TensorRT ({', '.join(lacking)}) has")
        elif not r.optional and lacking:
            problems.append(f"{r.where}: trt.{r.path} does not exist in TensorRT {', '.join(lacking)}")
    return sorted(set(problems))


# ---------------------------------------------------------------- mypy


def typecheck(root: Path, versions: list[str], files: list[Path]) -> dict[str, subprocess.CompletedProcess]:
    """mypy on `files` against each version's stubs (the project's [tool.mypy] settings)."""
    runs = {}
    for v in versions:
        env = {**os.environ, "MYPYPATH": str(root / v / "stubs")}
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(root / v / "mypy-cache"),
               *map(str, files)]
        runs[v] = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    return runs


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("prepare", "typecheck", "check"):
        print(__doc__)
        return 2
    root = Path(argv[1])
    files = [Path(f).resolve() for f in argv[2:]] or tensorrt_files()
    versions = [v for v in os.environ.get("TLDEPLOY_TRT_VERSIONS", ",".join(VERSIONS)).split(",") if v]
    if argv[0] == "prepare":
        prepare(root, versions)
        return 0
    if argv[0] == "typecheck":
        failed = False
        for v, run in typecheck(root, versions, files).items():
            print(f"TensorRT {VERSIONS[v]}: {run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr.strip()}")
            if run.returncode != 0:
                print(run.stdout, end="")
                failed = True
        return 1 if failed else 0
    problems = check(root, versions, files)
    for p in problems:
        print(p)
    n = len(references(files))
    print(f"{n} TensorRT references in {len(files)} files checked against TensorRT {', '.join(VERSIONS[v] for v in versions)}: "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
