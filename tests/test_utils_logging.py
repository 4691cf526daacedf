"""A library imported into someone else's program changes neither its logging nor its environment, and
``setup_logging`` (called by entry points) replaces only the handlers it added itself."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_EVERYTHING = """
import importlib, logging, os, pkgutil, sys
host = logging.StreamHandler(sys.stdout)
logging.getLogger().addHandler(host)
import torch, timm  # third-party imports may set their own variables (timm: TORCHINDUCTOR_CACHE_DIR)
before = dict(os.environ)
names = ["run_class_finetuning", "run_mask_pretrain", "run_regression_finetuning", "run_videomamba_pretraining"]
for package in ("models", "datasets", "engines", "utils", "tools"):
    names.append(package)
    names += [m.name for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
for name in names:
    importlib.import_module(name)
root = logging.getLogger()
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(len(names), root.handlers == [host], root.level == logging.WARNING, changed)
"""


def test_importing_the_library_leaves_logging_and_the_environment_alone():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout.strip().split(maxsplit=3)
    assert int(out[0]) > 60  # every module of the five packages and the entry scripts
    assert out[1:] == ["True", "True", "[]"]


SET_UP_TWICE = """
import logging, sys
from pathlib import Path
from utils.logging import log_to_files, setup_logging
out = Path(sys.argv[1])
root = logging.getLogger()
host = logging.FileHandler(out / "host.log")
root.addHandler(host)
setup_logging(out / "first")
logging.getLogger("x").info("one")
setup_logging(out / "second")
logging.getLogger("x").info("two")
log_to_files(logging.ERROR, "files only")
ours = [h for h in root.handlers if h is not host]
print(host in root.handlers, len(ours), sorted(type(h).__name__ for h in ours))
"""


def test_setup_logging_keeps_the_host_handlers_and_replaces_only_its_own(tmp_path):
    out = subprocess.run([sys.executable, "-c", SET_UP_TWICE, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().split(maxsplit=2) == ["True", "2", "['FileHandler', 'StreamHandler']"]
    first, second = (tmp_path / d / "train.log" for d in ("first", "second"))
    assert "one" in first.read_text() and "two" not in first.read_text()
    assert "two" in second.read_text() and "files only" in second.read_text()
    assert out.stderr.count("INFO x: one") == 1 and out.stderr.count("INFO x: two") == 1  # one stderr handler
    assert "files only" not in out.stderr and "files only" not in (tmp_path / "host.log").read_text()
    assert "one" in (tmp_path / "host.log").read_text()
