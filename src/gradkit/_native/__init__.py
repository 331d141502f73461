"""Native (C/OpenMP) kernels for the optimizer fast paths.

An optimizer step is memory-bound: the floor is the bytes it must move. The readable path runs a
chain of multi-tensor torch ops, each a full pass over memory; a fast path runs the whole named
update in one pass per tensor (or two where the method needs a per-tensor reduction first, as
LAMB's trust ratio does). The kernels are plain C compiled on first use with the system C
compiler (``cc -O3 -march=native -fopenmp``; no torch headers): each source file separately, for
the dtype a step needs, when one of its kernels first runs (a fraction of a second each), cached
under ``$GRADKIT_CACHE_DIR`` (default ``~/.cache/gradkit``) keyed by the source, the build flags,
the compiler and the CPU, so later processes load them in milliseconds. They link the
OpenMP runtime torch already loaded, so they share its threads.

Without a C compiler (or with ``GRADKIT_NATIVE=0``) every optimizer runs its readable path and a
warning says so once; results are the same up to floating-point rounding (tests compare the two
paths in float64).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["available", "build_all", "function", "kernel", "library", "Kernel", "OUT_WIDTH"]

SOURCE_DIR = Path(__file__).parent
OUT_WIDTH = 4  # GK_OUT in gk.h: per-tensor reduction slots
_TYPES = {torch.float32: ("float", "_f32"), torch.float64: ("double", "_f64")}
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-std=c11"]
_FLAGS += [
    "-Werror=implicit-function-declaration"
]  # a missing kernel fails the build, not the load
if platform.machine().lower() in ("x86_64", "amd64"):
    # GCC prefers 256-bit vectors on AVX-512 CPUs by default; the divisions, square roots and
    # polynomials of the Adam-type kernels run at half the rate then (124M diffGrad step: 173 ->
    # 138 ms, LAMB ~224 -> ~204 ms, memory-bound kernels unchanged). Without AVX-512 it is a no-op.
    _FLAGS.insert(2, "-mprefer-vector-width=512")
_lock = threading.Lock()
_failed: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("GRADKIT_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gradkit"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(cc: str, src: Path, ctype: str, suffix: str, out: Path) -> None:
    """Compile one kernel source for one element type into a shared library at ``out``."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        linked = Path(tmp) / out.name
        cmd = [cc, *_FLAGS, f"-DGK_T={ctype}", f"-DGK_SFX={suffix}", f"-I{SOURCE_DIR}"]
        cmd += ["-DGK_DOUBLE"] if ctype == "double" else []
        cmd += ["-shared", "-o", str(linked), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
        os.replace(linked, out)  # atomic: a concurrent process sees the whole file or none


def _unit_path(cc: str, src: Path, suffix: str) -> Path:
    global _compiler_version
    if _compiler_version is None:
        _compiler_version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256()
    for part in (Path(__file__), SOURCE_DIR / "gk.h", src):  # the source and how it is built
        key.update(part.name.encode() + part.read_bytes())
    for part in (_FLAGS, suffix, _compiler_version, _cpu_signature(), sys.platform):
        key.update(repr(part).encode())
    return _cache_dir() / "native" / f"{src.stem}{suffix}-{key.hexdigest()[:16]}.so"


_compiler_version: str | None = None
_SYMBOL = re.compile(r"GK_FN\((gk_\w+)\)|^(?:void|int) (gk_\w+)\(", re.MULTILINE)
_symbols: dict[str, Path] | None = None
_units: dict[tuple[Path, str], ctypes.CDLL] = {}


def _source_of(symbol: str) -> Path | None:
    """The kernel source defining ``symbol`` (``gk_adam``; typed suffixes stripped)."""
    global _symbols
    if _symbols is None:
        _symbols = {}
        for src in sorted(SOURCE_DIR.glob("*.c")):
            for typed, plain in _SYMBOL.findall(src.read_text()):
                _symbols[typed or plain] = src
    return _symbols.get(symbol)


def _unit(src: Path, dtype: torch.dtype) -> ctypes.CDLL | None:
    """The compiled library of one source for one dtype (built on first use, then cached)."""
    global _failed
    ctype, suffix = _TYPES[dtype]
    lib = _units.get((src, suffix))
    if lib is not None or _failed is not None:
        return lib
    with _lock:
        if (src, suffix) in _units or _failed is not None:
            return _units.get((src, suffix))
        if os.environ.get("GRADKIT_NATIVE", "1") == "0":
            _failed = "disabled by GRADKIT_NATIVE=0"
            return None
        try:
            cc = _compiler()
            if cc is None:
                raise RuntimeError("no C compiler found (set CC, or install gcc/clang)")
            path = _unit_path(cc, src, suffix)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                _build(cc, src, ctype, suffix, path)
            lib = _units[(src, suffix)] = ctypes.CDLL(str(path))
        except (OSError, RuntimeError) as e:
            _failed = str(e)
            warnings.warn(
                f"gradkit's native optimizer kernels are unavailable ({e}); optimizers run their "
                "readable multi-tensor path (same results, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
        return lib


def library() -> ctypes.CDLL | None:
    """The library of the smallest kernel source (the availability probe), or None.

    Sources are compiled one at a time, for the dtype a step needs, the first time a kernel of
    theirs runs, so a first step compiles two small files, not all of them."""
    return _unit(SOURCE_DIR / "checks.c", torch.float32)


def build_all() -> None:
    """Compile every kernel source for every dtype now (tests; warming a cache)."""
    for src in sorted(SOURCE_DIR.glob("*.c")):
        for dtype in _TYPES:
            _unit(src, dtype)


def available() -> bool:
    """Whether the native kernels can run in this process."""
    return library() is not None


class Kernel:
    """One native update rule: ``run`` applies it to a group's tensors in place."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._fns: dict[torch.dtype, ctypes._CFuncPtr] = {}

    def ready(self, dtype: torch.dtype) -> bool:
        """Whether this kernel is compiled (or compiles now) for ``dtype``."""
        src = _source_of(f"gk_{self.name}")
        return dtype in _TYPES and src is not None and _unit(src, dtype) is not None

    def _fn(self, dtype: torch.dtype) -> ctypes._CFuncPtr:
        fn = self._fns.get(dtype)
        if fn is None:
            src = _source_of(f"gk_{self.name}")
            lib = _unit(src, dtype) if src is not None else None
            if lib is None:
                raise RuntimeError(f"native kernel gk_{self.name} is unavailable ({_failed})")
            fn = getattr(lib, f"gk_{self.name}{_TYPES[dtype][1]}")
            fn.restype = None
            fn.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 5 + [ctypes.c_int]
            self._fns[dtype] = fn
        return fn

    def run(
        self,
        lists: Sequence[Sequence[Tensor]],
        steps: Tensor,
        hp: Sequence[float],
        out: Tensor | None = None,
    ) -> None:
        """``lists`` = [params, grads, *state lists] (same length, same dtype, contiguous CPU
        tensors); ``steps`` a float64 tensor of step counts; ``hp`` the kernel's scalars; ``out``
        an optional float64 [n, OUT_WIDTH] tensor receiving per-tensor reductions."""
        first = lists[0]
        n = len(first)
        table = torch.tensor([t.data_ptr() for ts in lists for t in ts], dtype=torch.int64)
        numel = torch.tensor([t.numel() for t in first], dtype=torch.int64)
        scalars = torch.tensor([float(h) for h in hp], dtype=torch.float64)
        steps = steps.to(torch.float64).contiguous()
        self._fn(first[0].dtype)(
            n,
            numel.data_ptr(),
            steps.data_ptr(),
            table.data_ptr(),
            scalars.data_ptr(),
            out.data_ptr() if out is not None else None,
            torch.get_num_threads(),
        )


_functions: dict[str, ctypes._CFuncPtr] = {}


def function(name: str, argtypes: list[Any]) -> ctypes._CFuncPtr | None:
    """A kernel with its own signature (e.g. ``gk_q8_encode``), or None if unavailable."""
    fn = _functions.get(name)
    if fn is None:
        src = _source_of(name)
        lib = _unit(src, torch.float32) if src is not None else None
        if lib is None:
            return None
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = argtypes
        _functions[name] = fn
    return fn


_kernels: dict[str, Kernel] = {}


def kernel(name: str) -> Kernel:
    """The kernel ``gk_<name>_f32/_f64`` of the library (one object per name)."""
    if name not in _kernels:
        _kernels[name] = Kernel(name)
    return _kernels[name]


def eligible(lists: Sequence[Sequence[Tensor]]) -> bool:
    """Whether tensors can go to a native kernel: CPU, contiguous, one float32/float64 dtype."""
    if any(len(ts) != len(lists[0]) for ts in lists):
        return False
    dtype = lists[0][0].dtype if lists and lists[0] else None
    if dtype not in _TYPES:
        return False
    for ts in lists:
        for t in ts:
            if t is None or t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
                return False
    return True
