"""``benchmarks/grpo_race.py --set KEY=VALUE``: posttrain's runs take options beyond the race's
settings (e.g. ``torch_compile=true``), values read as JSON, else kept as text; a malformed pair
is refused by name."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "grpo_race.py"


def _race():
    spec = importlib.util.spec_from_file_location("grpo_race", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_set_pairs_become_typed_options():
    options = _race().posttrain_options(["torch_compile=true", "update_layout=padded", "max_completion_length=64"], argparse.ArgumentParser())
    assert options == {"torch_compile": True, "update_layout": "padded", "max_completion_length": 64}


def test_a_pair_without_a_value_is_refused(capsys):
    with pytest.raises(SystemExit):
        _race().posttrain_options(["torch_compile"], argparse.ArgumentParser())
    assert "--set takes KEY=VALUE, got 'torch_compile'" in capsys.readouterr().err
