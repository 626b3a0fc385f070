"""docs/design.md, "Principles" 3: ``posttrain.losses`` and ``posttrain.data`` import without accelerate, peft,
transformers' models or any generation backend, so they stay usable (and testable) on their own."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import posttrain.data, posttrain.losses
for package in (posttrain.data, posttrain.losses):
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
print(sorted({name.split(".")[0] for name in sys.modules} & {"accelerate", "peft", "transformers", "vllm", "deepspeed"}))
"""


def test_losses_and_data_import_without_heavy_dependencies():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
