"""Native (C/OpenMP) kernels for the optimizer fast paths.

An optimizer step is memory-bound: the floor is the bytes it must move. The readable path runs a
chain of multi-tensor torch ops, each a full pass over memory; a fast path runs the whole named
update in one pass per tensor (or two where the method needs a per-tensor reduction first, as
LAMB's trust ratio does). The kernels are plain C compiled on first use with the system C
compiler (``cc -O3 -march=native -fopenmp``; no torch headers, so a build takes about a second)
and cached under ``$GRADKIT_CACHE_DIR`` (default ``~/.cache/gradkit``), keyed by the sources, the
flags, the compiler and the CPU, so later processes load it in milliseconds. They link the
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

__all__ = ["available", "function", "kernel", "library", "Kernel", "OUT_WIDTH"]

SOURCE_DIR = Path(__file__).parent
OUT_WIDTH = 4  # GK_OUT in gk.h: per-tensor reduction slots
_TYPES = {torch.float32: ("float", "_f32"), torch.float64: ("double", "_f64")}
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-std=c11"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
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


def _build(cc: str, out: Path) -> None:
    sources = sorted(SOURCE_DIR.glob("*.c"))
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        objects, procs = [], []
        for src in sources:
            for ctype, suffix in _TYPES.values():
                obj = Path(tmp) / f"{src.stem}{suffix}.o"
                objects.append(str(obj))
                cmd = [cc, *_FLAGS, f"-DGK_T={ctype}", f"-DGK_SFX={suffix}", f"-I{SOURCE_DIR}"]
                cmd += ["-DGK_DOUBLE"] if ctype == "double" else []
                cmd += ["-c", str(src), "-o", str(obj)]
                procs.append((cmd, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)))
        for cmd, proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
        linked = Path(tmp) / out.name
        cmd = [cc, "-shared", "-fopenmp", "-o", str(linked), *objects]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
        os.replace(linked, out)  # atomic: a concurrent process sees the whole file or none


def _library_path(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256()
    for src in [Path(__file__), *sorted(SOURCE_DIR.glob("*.[ch]"))]:  # + how they are built
        key.update(src.name.encode() + src.read_bytes())
    for part in (_FLAGS, version, _cpu_signature(), sys.platform):
        key.update(repr(part).encode())
    return _cache_dir() / "native" / f"gradkit_kernels-{key.hexdigest()[:16]}.so"


def library() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first use, then cached), or None if unavailable."""
    global _lib, _failed
    if _lib is not None or _failed is not None:
        return _lib
    with _lock:
        if _lib is not None or _failed is not None:
            return _lib
        if os.environ.get("GRADKIT_NATIVE", "1") == "0":
            _failed = "disabled by GRADKIT_NATIVE=0"
            return None
        try:
            cc = _compiler()
            if cc is None:
                raise RuntimeError("no C compiler found (set CC, or install gcc/clang)")
            path = _library_path(cc)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                _build(cc, path)
            _lib = ctypes.CDLL(str(path))
        except (OSError, RuntimeError) as e:
            _failed = str(e)
            warnings.warn(
                f"gradkit's native optimizer kernels are unavailable ({e}); optimizers run their "
                "readable multi-tensor path (same results, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
        return _lib


def available() -> bool:
    """Whether the native kernels can run in this process."""
    return library() is not None


class Kernel:
    """One native update rule: ``run`` applies it to a group's tensors in place."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._fns: dict[torch.dtype, ctypes._CFuncPtr] = {}

    def _fn(self, dtype: torch.dtype) -> ctypes._CFuncPtr:
        fn = self._fns.get(dtype)
        if fn is None:
            lib = library()
            assert lib is not None
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
        lib = library()
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
