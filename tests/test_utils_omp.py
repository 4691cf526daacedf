"""Entry scripts run as scripts ask OpenMP for passive waiting before torch starts, unless the user chose a policy;
importing them, or any module of the library, leaves the environment alone (tests/test_utils_logging.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from utils.omp import threads_spin

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = ["run_class_finetuning.py", "run_mask_pretrain.py", "run_regression_finetuning.py",
                 "run_videomamba_pretraining.py", "tools/predict.py", "tools/extract_features.py", "tools/export.py"]
# Runs each script as `python SCRIPT` does (``__main__``) up to its first `import torch`, which is stopped there,
# and records $OMP_WAIT_POLICY at that moment: without a policy, then with the user's "active".
AT_TORCH_IMPORT = """
import json, os, runpy, sys
class TorchImport(Exception):
    pass
class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise TorchImport(os.environ.get("OMP_WAIT_POLICY", "unset"))
sys.meta_path.insert(0, Stop())
seen = {}
for preset in (None, "active"):
    for script in sys.argv[1:]:
        os.environ.pop("OMP_WAIT_POLICY", None)
        if preset:
            os.environ["OMP_WAIT_POLICY"] = preset
        try:
            runpy.run_path(script, run_name="__main__")
        except TorchImport as stop:
            seen[f"{script} {preset}"] = str(stop)
print(json.dumps(seen))
"""


def test_entry_scripts_default_to_passive_waiting_before_torch_starts():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", AT_TORCH_IMPORT, *ENTRY_SCRIPTS], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {**{f"{script} None": "passive" for script in ENTRY_SCRIPTS},
                               **{f"{script} active": "active" for script in ENTRY_SCRIPTS}}


def test_threads_spin_only_under_the_active_policy(monkeypatch):
    for policy, spins in (("active", True), (" ACTIVE ", True), ("passive", False), (None, False)):
        if policy is None:
            monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        else:
            monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        assert threads_spin() is spins, policy
