"""Make tests/support (shared harness) and tests/reference (reference updates) importable."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest
import torch


@pytest.fixture(autouse=True)
def _no_leaked_denormal_flushing():
    """Some code under test flushes CPU denormals; never let that leak into the next test
    (hypothesis refuses to draw floats when subnormals are flushed)."""
    yield
    torch.set_flush_denormal(False)
