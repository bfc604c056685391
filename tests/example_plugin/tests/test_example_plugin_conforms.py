"""The example plugin checks itself with petseg-bench's conformance kit, as any third party would:
`pytest tests/` in the plugin's own folder (it imports the plugin's source beside it)."""

import sys
from pathlib import Path

from petseg_bench.testing import check_backbone_spec, check_model_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the plugin's source, installed or not
from petseg_example_plugin import petseg_bench_backbones, petseg_bench_models


def test_model_keeps_the_engine_contract():
    for spec in petseg_bench_models():
        assert check_model_spec(spec, {"in_size": 32}, sizes=(32, 64)) == []


def test_backbone_keeps_the_engine_contract():
    for spec in petseg_bench_backbones():
        assert check_backbone_spec(spec) == []
