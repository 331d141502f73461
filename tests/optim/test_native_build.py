"""Where a C compiler exists, the native kernels must build: a broken kernel source would
otherwise fall back to the readable path silently (test_native.py skips without kernels)."""

import pytest

from gradkit import _native


def test_kernels_build_wherever_a_compiler_exists():
    if _native._compiler() is None:
        pytest.skip("no C compiler on this machine: the readable path runs (by design)")
    if _native._failed and "GRADKIT_NATIVE=0" in _native._failed:
        pytest.skip("native kernels disabled by GRADKIT_NATIVE=0")
    _native.build_all()  # every source, both dtypes
    assert _native._failed is None, _native._failed
    assert _native.available()
