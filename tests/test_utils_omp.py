"""Entry scripts run as scripts ask OpenMP for passive waiting before torch starts, unless the user chose a policy;
importing them, or any module of the library, leaves the environment alone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = ["run_class_finetuning.py", "run_mask_pretrain.py", "run_regression_finetuning.py",
                 "run_videomamba_pretraining.py", "tools/predict.py", "tools/extract_features.py"]
# Runs SCRIPT as `python SCRIPT --help` does (``__main__``, the help text dropped) and prints $OMP_WAIT_POLICY as it was when torch was
# first imported.
AT_TORCH_IMPORT = """
import contextlib, io, os, runpy, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY", "unset"))
sys.meta_path.insert(0, Spy())
sys.argv = [{script!r}, "--help"]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_path({script!r}, run_name="__main__")
    except SystemExit:
        pass
print(*seen)
"""


def _without_omp_policy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_entry_scripts_default_to_passive_waiting_before_torch_starts(script):
    out = subprocess.run([sys.executable, "-c", AT_TORCH_IMPORT.format(script=script)], cwd=ROOT,
                         env=_without_omp_policy(), capture_output=True, text=True, check=True).stdout.split()
    assert out == ["passive"]


def test_a_policy_the_user_chose_is_kept():
    env = {**_without_omp_policy(), "OMP_WAIT_POLICY": "active"}
    out = subprocess.run([sys.executable, "-c", AT_TORCH_IMPORT.format(script="run_class_finetuning.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["active"]
