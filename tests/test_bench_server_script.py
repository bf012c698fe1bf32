"""benchmarks/bench_server.py's last step, the server's own cost per token with a stand-in model
behind it: the stand-in must keep up with what the server asks of a model (it once lacked
encode_chat and the step crashed after the comparison table)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("loopback")


def test_the_pipeline_cost_runs_with_the_stand_in_model():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_server
    finally:
        sys.path.pop(0)
    cost = bench_server.pipeline_cost("tiny-chat", None, tokens=50)
    assert set(cost) == {"non-streaming", "streaming"} and all(v > 0 for v in cost.values())
