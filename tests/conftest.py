"""Test configuration: Triton's interpreter, the pinned dense fallback, the hypothesis profiles, where CamVid is.

TRITON_INTERPRET must be set before anything decorates a Triton kernel, so it is set here,
before the tests import sparsecascade: the Triton kernels then run on CPU tensors.
"""
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# Where "auto" on a CPU falls back to the dense convolution is measured per process in use (see
# sparsecascade/ops/dense_fallback.py); the tests pin it so that which path runs does not depend on
# the machine's load. tests/test_dense_fallback.py tests the measurement itself.
os.environ.setdefault("SPARSECASCADE_DENSE_FALLBACK", "0.8")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# "ci" (the default) keeps the suite within CI's budget on 2 cores; "thorough" for a long run:
#   HYPOTHESIS_PROFILE=thorough python -m pytest tests
settings.register_profile(
    "ci", deadline=None, max_examples=25, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def camvid_root() -> Path:
    """Where the tests on real CamVid files read it: $SPARSECASCADE_CAMVID, else ../shared/data/camvid
    beside the repository (as the README says); the tests skip, saying so, where it is absent."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
    return Path(os.environ.get("SPARSECASCADE_CAMVID") or default).expanduser()


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
