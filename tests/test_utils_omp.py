"""Entry points ask OpenMP for passive waiting before torch starts, unless the user chose a policy."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import os, sys; sys.argv = ['x']; import {module}; import torch; "
         "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")


@pytest.mark.parametrize("module, preset", [("run_class_finetuning", None), ("run_mask_pretrain", None),
                                            ("run_class_finetuning", "active")])
def test_entry_scripts_default_to_passive_waiting(module, preset):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [preset or "passive", "True"]
