"""The op and the layer stand alone: no timm, no model family behind ``import acmix.ops`` / ``acmix.nn``."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["timm"] = None  # any 'import timm' now fails
import torch
import acmix.ops, acmix.nn
layer = acmix.nn.ACmix(4, 8)
assert layer(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)
assert not any(name.startswith("acmix.models") for name in sys.modules), sorted(sys.modules)
print("ok")
"""


def test_ops_and_nn_import_without_timm():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_import_acmix_registers_the_models():
    import timm

    import acmix  # noqa: F401

    assert "acmix_resnet50" in timm.list_models("acmix_*")
