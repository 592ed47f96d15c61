"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 (PTX and cubin), no GPU needed.

The tests run under TRITON_INTERPRET=1, which swaps the autotune config lists for a single one,
so the compilation runs in a subprocess without it (``sparsecascade.kernels._aot_check``).
A cold run is ~100 CPU-seconds (about 50 s on 2 cores); Triton's cache makes reruns quick.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from sparsecascade.kernels import TRITON_AVAILABLE

pytestmark = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton is not installed")


@pytest.mark.slow
def test_every_kernel_and_config_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences Triton 3.9's default-change warning
    proc = subprocess.run(
        [sys.executable, "-m", "sparsecascade.kernels._aot_check"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    done = re.search(r"compiled (\d+)/(\d+) kernels", proc.stdout)
    assert done is not None, report
    compiled, total = int(done.group(1)), int(done.group(2))
    # 3 dtypes x 2 archs x (6 forward + 4 + 4 backward + 4 confidence configs) + 2 x 4 compaction
    assert compiled == total >= 100, report
