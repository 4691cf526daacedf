"""User errors through the real entry scripts (subprocesses): exit status 2 for usage errors and 1 for unusable
files, one ``error: ...`` line naming the file or flag, no traceback unless --debug (the log file keeps it).

``DIRECT`` cases run as ``python SCRIPT ...``; the others in children forked by ``tests/fork_runner.py`` after one
shared import (the same script run as ``__main__``, its own process, exit status and stderr).
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import timm
import torch

from torch.utils.data import DataLoader, Dataset

import models  # noqa: F401  (registers the models)
import run_class_finetuning
from datasets.video_dataset import BadInputError
from engines.cli import user_message
from entry_runs import REPO, environment
from tools.make_synthetic_dataset import make_dataset
from untrusted import save_code_running_checkpoint
from utils.config import checkpoint_args, finetune_config
from utils.errors import MissingPathError, UsageError, is_placeholder, require_path

DIRECT = ("malformed_list", "placeholder_data_path")
WARNINGS = ("changed_flags",)  # runs that go on, with a warning
ENV = {"no_cuda": {"CUDA_VISIBLE_DEVICES": ""}, "bad_scan_backend": {"VIDEOMAMBA_SCAN_BACKEND": "triton"}}
BASE = ["--depth", "1", "--embed_dim", "32", "--num_frames", "4", "--tubelet_size", "1", "--input_size", "32",
        "--short_side_size", "32", "--device", "cpu", "--num_workers", "0", "--nb_classes", "4", "--data_set",
        "Kinetics_sparse", "--eval", "--disable_eval_during_finetuning", "--test_num_segment", "1",
        "--test_num_crop", "1", "--batch_size", "1"]
TRAIN = [arg for arg in BASE if arg != "--eval"]


def _cases(root: Path) -> dict[str, tuple[str, list[str], int, str]]:
    """name → (script, argv, exit status, text the error line must contain)."""
    data, out = root / "data", root / "out"
    good = ["--data_path", str(data), "--prefix", str(data), "--output_dir", str(out)]
    return {
        "malformed_list": ("run_class_finetuning.py", [*BASE, "--data_path", str(root / "malformed"), "--prefix",
                                                       str(data), "--output_dir", str(root / "out_malformed")],
                           1, f"{root / 'malformed' / 'test.csv'}:3: expected 2 fields"),
        "malformed_list_debug": ("run_class_finetuning.py", [*BASE, "--data_path", str(root / "malformed"),
                                                             "--prefix", str(data), "--debug"],
                                 1, "test.csv:3: expected 2 fields"),
        "missing_data_path": ("run_class_finetuning.py", [*BASE, "--data_path", str(root / "nope")],
                              2, f"--data_path {root / 'nope'}: no such folder"),
        "placeholder_data_path": ("run_class_finetuning.py", BASE, 2,
                                  "--data_path you_data_path: a placeholder of the official scripts"),
        "missing_list": ("run_class_finetuning.py", [*BASE, "--data_path", str(root / "no_test"), "--prefix",
                                                     str(data)],
                         2, f"the test list test.csv is not there ({root / 'no_test' / 'test.csv'})"),
        "missing_prefix": ("run_class_finetuning.py", [*BASE, "--data_path", str(data), "--prefix",
                                                       str(root / "videos_nope")],
                           2, f"--prefix {root / 'videos_nope'}: no such folder"),
        "missing_finetune": ("run_class_finetuning.py", [*BASE, *good, "--finetune", str(root / "nope.pth")],
                             2, f"--finetune {root / 'nope.pth'}: no such file"),
        "placeholder_finetune": ("run_class_finetuning.py", [*BASE, *good, "--finetune",
                                                             "your_model_path/videomamba_t16_k400_f8_res224.pth"],
                                 2, "--finetune your_model_path/videomamba_t16_k400_f8_res224.pth: a placeholder"),
        "unreadable_finetune": ("run_class_finetuning.py", [*BASE, *good, "--finetune", str(root / "garbage.pth")],
                                1, f"{root / 'garbage.pth'} is not a checkpoint"),
        "shape_mismatch": ("run_class_finetuning.py", [*BASE, *good, "--finetune", str(root / "width16.pth")],
                           1, f"{root / 'width16.pth'}: the checkpoint is 16 wide, the model 32, so none of its "
                              "blocks fits (set by --model / --embed_dim)"),
        "resume_does_not_fit": ("run_class_finetuning.py", [*TRAIN, *good, "--resume", str(root / "f8c5.pth")],
                                1, f"{root / 'f8c5.pth'} does not fit the model (shapes: checkpoint vs model): "
                                   "temporal_pos_embedding (1, 8, 32) vs (1, 4, 32) (set by --num_frames / "
                                   "--tubelet_size); head.weight (5, 32) vs (4, 32), head.bias (5,) vs (4,) (set by "
                                   "--nb_classes). Use the flags of the run that wrote it"),
        "changed_flags": ("run_class_finetuning.py", [*TRAIN, *good, "--epochs", "1", "--resume",
                                                      str(root / "other_flags.pth")],
                          0, f"{root / 'other_flags.pth'} was written with other flags than this run's: --epochs 30 "
                             "(now 1), --lr 0.5 (now 7.8125e-06), --smoothing 0.3 (now 0.1). Resuming it as --resume "
                             "asks"),
        "no_cuda": ("run_class_finetuning.py", [*[a for a in BASE if a not in ("--device", "cpu")], *good],
                    2, "--device cuda: CUDA is not available on this machine; pass --device cpu"),
        "dist_on_itp": ("run_class_finetuning.py", [*BASE, *good, "--dist_on_itp"],
                        2, "--dist_on_itp takes rank and world size from OpenMPI, but OMPI_COMM_WORLD_RANK, "
                           "OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK are not set: launch with mpirun"),
        "bad_scan_backend": ("run_class_finetuning.py", [*BASE, *good],
                             2, "unknown selective-scan backend 'triton' from $VIDEOMAMBA_SCAN_BACKEND; choose one of "
                                "('auto', 'cuda', 'cpp', 'torch', 'ref')"),
        "label_outside_nb_classes": ("run_class_finetuning.py", [*BASE, *good, "--data_path", str(root / "label7")],
                                     1, f"{root / 'label7' / 'test.csv'}:2: label 7 is not a class of --nb_classes 4 "
                                        "(labels 0 to 3): "),
        "wrong_separator": ("run_class_finetuning.py", [*BASE, *good, "--data_path", str(root / "commas")],
                            1, f"{root / 'commas' / 'test.csv'}:1: expected 2 fields 'path label' separated by ' '; "
                               "with --split ',' it has 2: "),
        "missing_resume": ("run_class_finetuning.py", [*BASE, *good, "--resume", str(root / "gone.pth")],
                           2, f"--resume {root / 'gone.pth'}: no such file or folder"),
        "unreadable_resume": ("run_class_finetuning.py", [*BASE, *good, "--resume", str(root / "garbage.pth")],
                              1, f"{root / 'garbage.pth'} is not a checkpoint"),
        "unknown_finetune_tag": ("run_class_finetuning.py", [*BASE, *good, "--finetune",
                                                             "videomamba_tiny.k400_f8_res22"],
                                 2, "--finetune videomamba_tiny.k400_f8_res22: unknown pretrained tag; closest: "
                                    "videomamba_tiny.k400_f8_res224"),
        "uncached_finetune_tag": ("run_class_finetuning.py", [*BASE, *good, "--finetune",
                                                              "videomamba_tiny.k400_f8_res224"],
                                  1, "--finetune videomamba_tiny.k400_f8_res224: cannot get OpenGVLab/VideoMamba/"
                                     "videomamba_t16_k400_f8_res224.pth from the Hugging Face hub (HF_HUB_OFFLINE is "
                                     f"set and it is not in the cache {root / 'hf_cache'})"),
        "untrusted_finetune": ("run_class_finetuning.py", [*BASE, *good, "--finetune", str(root / "crafted.pth")],
                               1, f"{root / 'crafted.pth'} is not a weights-only checkpoint (it names "
                                  "builtins.getattr"),
        "untrusted_resume": ("run_class_finetuning.py", [*BASE, *good, "--resume", str(root / "crafted.pth")],
                             1, "loading it would run code named in the file; if you trust its source, pass "
                                "--trust_checkpoint"),
        "unknown_model": ("run_class_finetuning.py", [*BASE, *good, "--model", "videomamba_huge"],
                          2, "--model 'videomamba_huge' is not a registered model; choose one of: videomamba_middle, "
                             "videomamba_small, videomamba_tiny"),
        "pretrain_unknown_model": ("run_mask_pretrain.py", ["--model", "videomamba_tiny", "--data_path",
                                                            str(data / "train.csv"), "--prefix", str(data),
                                                            "--device", "cpu", "--clip_teacher_random"],
                                   2, "--model 'videomamba_tiny' is not a registered model; choose one of: "
                                      "videomamba_middle_pretrain, videomamba_small_pretrain"),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, int, str, Path]]:
    root = tmp_path_factory.mktemp("errors")
    data = make_dataset(root / "data", num_train=2, num_val=1, num_test=2, size=32, frames=4)
    (root / "malformed").mkdir()
    lines = (data / "test.csv").read_text().splitlines()
    (root / "malformed" / "test.csv").write_text(f"{lines[0]}\n\n{lines[1].split()[0]}\n")  # line 3: no label
    (root / "no_test").mkdir()
    (root / "garbage.pth").write_bytes(b"this is not a checkpoint\n" * 10)
    cases = _cases(root)
    for name, label, split in (("label7", "7", " "), ("commas", "1", ",")):
        (root / name).mkdir()
        (root / name / "test.csv").write_text(f"{lines[0].split()[0]}{split}0\n{lines[1].split()[0]}{split}{label}\n")
    other = timm.create_model("videomamba_tiny", depth=1, embed_dim=32, num_frames=8, kernel_size=1, img_size=32,
                              num_classes=5)
    torch.save({"model": other.state_dict(), "epoch": 3}, root / "f8c5.pth")
    same = timm.create_model("videomamba_tiny", depth=1, embed_dim=32, num_frames=4, kernel_size=1, img_size=32,
                             num_classes=4)
    args = run_class_finetuning.get_args_parser().parse_args(cases["changed_flags"][1])
    flags = checkpoint_args(args, finetune_config(args))  # what a run with the same flags saves
    flags.update(epochs=30, lr=0.5, smoothing=0.3, num_workers=7, output_dir="/elsewhere")
    torch.save({"model": same.state_dict(), "epoch": 0, "args": flags}, root / "other_flags.pth")
    narrow = timm.create_model("videomamba_tiny", depth=1, embed_dim=16, num_frames=4, kernel_size=1, img_size=32,
                               num_classes=4)
    torch.save({"model": narrow.state_dict()}, root / "width16.pth")
    save_code_running_checkpoint(root / "crafted.pth", narrow.state_dict(), root / "code_ran", epoch=1)
    spec = [{"script": cases[name][0], "argv": cases[name][1], "stdout": str(root / f"{name}.out"),
             "stderr": str(root / f"{name}.err"), "env": ENV.get(name, {})} for name in cases if name not in DIRECT]
    (root / "spec.json").write_text(json.dumps(spec))

    env = environment(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root / "hf_cache"))  # tags: an empty cache, offline

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)

    with ThreadPoolExecutor(max_workers=len(DIRECT) + 1) as pool:
        forked = pool.submit(run, [str(REPO / "tests" / "fork_runner.py"), str(root / "spec.json")])
        direct = {name: pool.submit(run, [cases[name][0], *cases[name][1]]) for name in DIRECT}
        statuses = json.loads(forked.result().stdout.splitlines()[-1])
    done = {name: future.result() for name, future in direct.items()}
    for case, status in zip(spec, statuses):
        name = Path(case["stderr"]).stem
        done[name] = subprocess.CompletedProcess(case["argv"], status, Path(case["stdout"]).read_text(),
                                                 Path(case["stderr"]).read_text())
    return {name: (done[name], cases[name][2], cases[name][3], root) for name in cases}


@pytest.mark.parametrize("name", [n for n in _cases(Path("/r")) if not n.endswith("_debug") and n not in WARNINGS])
def test_user_error_is_one_line_with_its_exit_status(results, name):
    result, status, text, _ = results[name]
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and text in last, last


def test_resuming_a_checkpoint_of_other_flags_names_them(results):
    """A rerun in the same --output_dir (or --resume) with changed flags goes on, with one warning naming each flag
    that changes what is trained, its old and new value; flags that do not (--num_workers, --output_dir) are left
    out. Here the checkpoint ends epoch 0 and --epochs 1: nothing to train, the multi-view test runs."""
    result, status, text, _ = results["changed_flags"]
    assert result.returncode == status, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "was written with other flags" in line]
    assert len(warnings) == 1 and text in warnings[0] and "WARNING" in warnings[0], warnings
    assert "--num_workers" not in warnings[0] and "--output_dir" not in warnings[0]


def test_a_refused_checkpoint_ran_no_code(results):
    assert results["untrusted_resume"][0].returncode == 1 and results["untrusted_finetune"][0].returncode == 1
    assert not (results["untrusted_resume"][3] / "code_ran").exists()


def test_debug_prints_the_traceback_and_the_log_file_always_keeps_it(results):
    result, status, text, root = results["malformed_list_debug"]
    assert result.returncode == status
    assert "Traceback (most recent call last)" in result.stderr and "ListFileError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ") and text in result.stderr.splitlines()[-1]
    log = (root / "out_malformed" / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "test.csv:3: expected 2 fields" in log


class _Unreadable(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        raise BadInputError("2 of 4 files are unreadable, more than --max_bad_fraction 0.1 allows:\n"
                            "  /data/a.mp4 (zero-byte file)")


def test_an_error_raised_in_a_dataloader_worker_keeps_its_one_message():
    with pytest.raises(BadInputError) as caught:
        next(iter(DataLoader(_Unreadable(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # how torch re-raises it in the main process
    assert user_message(caught.value) == ("2 of 4 files are unreadable, more than --max_bad_fraction 0.1 allows:\n"
                                          "  /data/a.mp4 (zero-byte file)")
    assert user_message(UsageError("--model 'x' is not a registered model")) == "--model 'x' is not a registered model"


def test_placeholders_of_the_official_scripts():
    for value in ("you_data_path", "your_model_path/videomamba_t16_in1k_res224.pth", "/path/to/k400",
                  "/mnt/your_k400_path"):
        assert is_placeholder(value), value
        with pytest.raises(MissingPathError, match="placeholder"):
            require_path(value, "--data_path")
    for value in ("/data/k400", "yourself/videos", "data/you_data"):
        assert not is_placeholder(value), value
