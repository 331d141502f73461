"""Make tests/support (shared harness) and tests/reference (reference updates) importable."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest
import torch
from hypothesis import settings

# CI and the README's test command run the same examples every time (derandomize), so whether a
# change lands depends on the code, not on the draw. Exploring with fresh random examples is a
# separate, deliberate step: HYPOTHESIS_PROFILE=explore python -m pytest tests/...
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _no_leaked_denormal_flushing():
    """Some code under test flushes CPU denormals; never let that leak into the next test
    (hypothesis refuses to draw floats when subnormals are flushed)."""
    yield
    torch.set_flush_denormal(False)
