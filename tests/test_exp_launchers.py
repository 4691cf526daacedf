"""The exp/ launchers: one per official setting, valid bash, refuse placeholders, launch with srun or torchrun.

Launchers run in a sandbox copy of exp/ (entry scripts are empty files there) with fake `torchrun`/`srun`
executables on PATH that record their argv, so nothing real is started.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "exp"

_SIZES = ("videomamba_tiny", "videomamba_small", "videomamba_middle")
EXPECTED = (
    [f"k400/{m}/run_f{f}x224.sh" for m in _SIZES for f in (8, 16, 32, 64)]
    + [f"k400/{m}/run_f64x224to384.sh" for m in _SIZES]
    + [f"k400/videomamba_middle_mask/run_f{f}x224.sh" for f in (8, 16, 32, 64)]
    + ["k400/videomamba_middle_mask/run_f64x224to384.sh", "k400/videomamba_middle_mask/run_mask_pretrain.sh"]
    + [f"ssv2/{m}/{n}.sh" for m in _SIZES + ("videomamba_middle_mask",)
       for n in ("run_f8x224", "run_f16x224", "run_f16x224to288")]
    + ["ssv2/videomamba_middle_mask/run_mask_pretrain.sh"]
    + [f"{d}/{m}/run_f{f}x224.sh" for d in ("breakfast", "coin") for m in _SIZES + ("videomamba_middle_mask",)
       for f in (32, 64)]
    + [f"lvu/{n}.sh" for n in ("run_class", "run_regression", "run_class_trim", "run_regression_trim")]
)
LAUNCHERS = sorted(p.relative_to(EXP).as_posix() for p in EXP.rglob("*.sh")
                   if p.name != "common.sh" and p.relative_to(EXP).parts[0] != "demo")
PATH_VARS = ("DATA_PATH", "PREFIX", "MODEL_PATH", "CLIP_TEACHER_PATH")
FAKE_TOOL = '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$RECORD_DIR/$(basename "$0").args"\n'


def _launch_words(rel: str, env: dict[str, str]) -> list[str]:
    """The words of the `launch ...` call in a launcher, with "$VAR" expanded from env and the trailing "$@" dropped."""
    text = (EXP / rel).read_text()
    block = text[text.index("\nlaunch ") + 1:]
    for name in PATH_VARS:
        block = block.replace(f'"${name}"', shlex.quote(env.get(name, "")))
    words = shlex.split(block.replace("\\\n", " "))
    assert words[0] == "launch" and words[-1] == "$@", f"{rel}: launch call must end with \"$@\""
    return words[1:-1]


def _required(rel: str) -> list[str]:
    line = next(line for line in (EXP / rel).read_text().splitlines() if line.startswith("require_paths "))
    return line.split()[1:]


def _default_gpus(rel: str) -> int:
    match = re.search(r'^GPUS="\$\{GPUS:-(\d+)\}"$', (EXP / rel).read_text(), re.M)
    return int(match.group(1)) if match else 8


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of exp/ beside empty entry scripts, fake torchrun/srun, and real data/model paths."""
    root = tmp_path_factory.mktemp("sandbox")
    shutil.copytree(EXP, root / "repo" / "exp")
    for rel in LAUNCHERS:
        (root / "repo" / _launch_words(rel, {})[0]).touch()
    (root / "bin").mkdir()
    for tool in ("torchrun", "srun"):
        (root / "bin" / tool).write_text(FAKE_TOOL)
        (root / "bin" / tool).chmod(0o755)
    for name in PATH_VARS:
        (root / name.lower()).mkdir()
    return root


def _run(sandbox: Path, rel: str, record: Path, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    record.mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{sandbox / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/tmp"),
           "RECORD_DIR": str(record), "OUTPUT_DIR": str(record / "out"), **extra_env}
    return subprocess.run(["bash", str(sandbox / "repo" / "exp" / rel), *args], env=env, capture_output=True,
                          text=True, timeout=30)


def _paths(sandbox: Path) -> dict[str, str]:
    return {name: str(sandbox / name.lower()) for name in PATH_VARS}


def test_every_official_setting_has_a_launcher() -> None:
    assert len(EXPECTED) == 54
    assert sorted(EXPECTED) == LAUNCHERS


@pytest.mark.parametrize("rel", LAUNCHERS)
def test_launcher_is_valid_bash_and_sources_common(rel: str) -> None:
    assert subprocess.run(["bash", "-n", str(EXP / rel)], capture_output=True).returncode == 0
    text = (EXP / rel).read_text()
    depth = "../" * (len(Path(rel).parts) - 1)
    assert f'source "$(dirname "${{BASH_SOURCE[0]}}")/{depth}common.sh"' in text
    assert text.count("\nlaunch ") == 1
    assert {"DATA_PATH", "PREFIX"} <= set(_required(rel))


@pytest.mark.parametrize("problem", ["unset", "placeholder", "path_placeholder", "missing"])
@pytest.mark.parametrize("rel", LAUNCHERS)
def test_launcher_refuses_bad_paths_without_launching(sandbox: Path, tmp_path: Path, rel: str, problem: str) -> None:
    env = _paths(sandbox)
    required = _required(rel)
    bad = required[{"unset": 0, "placeholder": 1, "path_placeholder": 2, "missing": -1}[problem] % len(required)]
    if problem == "unset":
        del env[bad]
    else:
        env[bad] = {"placeholder": "your_model_path/ckpt.pth", "path_placeholder": "/path/to/data",
                    "missing": str(tmp_path / "nowhere")}[problem]
    result = _run(sandbox, rel, tmp_path, env)
    assert result.returncode != 0
    expected = {"unset": "is not set", "placeholder": "placeholder", "path_placeholder": "placeholder",
                "missing": "does not exist"}[problem]
    assert bad in result.stderr and expected in result.stderr
    assert f"exp/{rel}" in result.stderr
    assert not list(tmp_path.glob("*.args")), "nothing may be launched"


@pytest.mark.parametrize("rel", LAUNCHERS)
def test_torchrun_without_partition_passes_published_and_extra_flags(sandbox: Path, tmp_path: Path, rel: str) -> None:
    env = {**_paths(sandbox), "GPUS": "2", "MASTER_PORT": "29555"}
    result = _run(sandbox, rel, tmp_path, env, "--epochs", "1", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "srun.args").exists()
    argv = (tmp_path / "torchrun.args").read_text().splitlines()
    out = str(tmp_path / "out")
    launch = _launch_words(rel, env)
    assert argv == ["--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1", "--master_port=29555",
                    "--nproc_per_node=2", launch[0], "--output_dir", out, "--log_dir", out,
                    *launch[1:], "--epochs", "1", "--seed", "3"]


@pytest.mark.parametrize("rel", LAUNCHERS)
def test_srun_with_partition_uses_published_gpu_count(sandbox: Path, tmp_path: Path, rel: str) -> None:
    env = {**_paths(sandbox), "PARTITION": "video5", "JOB_NAME": "job"}
    result = _run(sandbox, rel, tmp_path, env, "--eval")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "torchrun.args").exists()
    argv = (tmp_path / "srun.args").read_text().splitlines()
    gpus = _default_gpus(rel)
    launch = _launch_words(rel, env)
    out = str(tmp_path / "out")
    assert argv == ["--partition=video5", "--job-name=job", f"--gres=gpu:{min(gpus, 8)}", f"--ntasks={gpus}",
                    f"--ntasks-per-node={min(gpus, 8)}", "--cpus-per-task=16", "--kill-on-bad-exit=1",
                    "python", "-u", launch[0], "--output_dir", out, "--log_dir", out, *launch[1:], "--eval"]


def test_model_path_may_name_released_weights(sandbox: Path, tmp_path: Path) -> None:
    """A pretrained tag or hf-hub: id in MODEL_PATH reaches --finetune (the entry script checks it); a file name that
    does not exist is still refused."""
    rel = "k400/videomamba_small/run_f8x224.sh"
    for name, weights in (("tag", "videomamba_small.in1k_res224"),
                          ("hub", "hf-hub:OpenGVLab/VideoMamba/videomamba_s16_in1k_res224.pth")):
        result = _run(sandbox, rel, tmp_path / name, {**_paths(sandbox), "MODEL_PATH": weights, "GPUS": "1"})
        assert result.returncode == 0, result.stderr
        argv = (tmp_path / name / "torchrun.args").read_text().splitlines()
        assert argv[argv.index("--finetune") + 1] == weights
    result = _run(sandbox, rel, tmp_path / "file", {**_paths(sandbox), "MODEL_PATH": "videomamba_s16_in1k_res224.pth"})
    assert result.returncode != 0 and "MODEL_PATH='videomamba_s16_in1k_res224.pth' does not exist" in result.stderr
    assert not (tmp_path / "file" / "torchrun.args").exists()


def test_multi_node_torchrun_needs_node_rank(sandbox: Path, tmp_path: Path) -> None:
    rel = "k400/videomamba_middle/run_f8x224.sh"
    assert _default_gpus(rel) == 16
    result = _run(sandbox, rel, tmp_path, _paths(sandbox))
    assert result.returncode != 0 and "NODE_RANK" in result.stderr
    assert not list(tmp_path.glob("*.args"))
    env = {**_paths(sandbox), "NODE_RANK": "1", "MASTER_ADDR": "node0"}
    assert _run(sandbox, rel, tmp_path, env).returncode == 0
    argv = (tmp_path / "torchrun.args").read_text().splitlines()
    assert argv[:3] == ["--nnodes=2", "--node_rank=1", "--master_addr=node0"] and "--nproc_per_node=8" in argv


def test_bad_gpu_counts_are_refused(sandbox: Path, tmp_path: Path) -> None:
    rel = "k400/videomamba_tiny/run_f8x224.sh"
    for gpus, per_node in (("12", "8"), ("two", "8")):
        result = _run(sandbox, rel, tmp_path, {**_paths(sandbox), "GPUS": gpus, "GPUS_PER_NODE": per_node})
        assert result.returncode != 0 and "GPUS" in result.stderr
    assert not list(tmp_path.glob("*.args"))


def test_every_launcher_model_is_registered() -> None:
    import timm

    import models  # noqa: F401  (registers the VideoMamba models with timm)

    names = {_launch_words(rel, {})[_launch_words(rel, {}).index("--model") + 1] for rel in LAUNCHERS}
    assert names == {"videomamba_tiny", "videomamba_small", "videomamba_middle", "videomamba_middle_pretrain"}
    for name in names:
        assert timm.is_model(name), name


def _entry_parsers() -> dict[str, argparse.ArgumentParser]:
    import run_class_finetuning
    import run_mask_pretrain
    import run_regression_finetuning

    return {"run_class_finetuning.py": run_class_finetuning.get_args_parser(),
            "run_regression_finetuning.py": run_regression_finetuning.get_args_parser(),
            "run_mask_pretrain.py": run_mask_pretrain.get_args_parser()}


def test_every_launcher_flag_exists_in_its_entry_script() -> None:
    parsers = _entry_parsers()
    by_entry: dict[str, set[str]] = {}
    for rel in LAUNCHERS:
        words = _launch_words(rel, {})
        by_entry.setdefault(words[0], set()).update(w for w in words[1:] if w.startswith("--"))
    assert set(by_entry) <= set(parsers)
    for entry, used in by_entry.items():
        known = set(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", parsers[entry].format_help()))
        missing = (used | {"--output_dir", "--log_dir"}) - known
        assert not missing, f"{entry} does not accept {sorted(missing)}"


def test_launcher_flag_values_parse(sandbox: Path) -> None:
    parsers = _entry_parsers()
    env = _paths(sandbox)
    for rel in LAUNCHERS:
        words = _launch_words(rel, env)
        args = parsers[words[0]].parse_args(words[1:] + ["--output_dir", "out"])
        assert args.model in {"videomamba_tiny", "videomamba_small", "videomamba_middle", "videomamba_middle_pretrain"}
        if words[0] == "run_class_finetuning.py":
            assert args.split == ("," if args.data_set != "SSV2" else " ")
            assert args.finetune == env["MODEL_PATH"] and args.opt_betas == [0.9, 0.999]


def test_model_zoo_names_existing_launchers_and_covers_them_all() -> None:
    text = (REPO / "MODEL_ZOO.md").read_text()
    named = set(re.findall(r"exp/([\w/]+\.sh)", text))
    assert named, "MODEL_ZOO.md names no launcher"
    for rel in named:
        assert (EXP / rel).is_file(), f"MODEL_ZOO.md names exp/{rel}, which does not exist"
    assert set(LAUNCHERS) <= named


# The published recipe of every launcher, written out: (--lr, --epochs, --batch_size per GPU, --num_frames,
# test views --test_num_segment x --test_num_crop; None for pretraining). These are the official launchers' values
# except the two settings MODEL_ZOO.md lists: SSv2 Ti f16x224to288 (16 frames, as its name says; official 64) and
# COIN M-mask f64 (10 segments, as published; official 4).
PUBLISHED = {
    "breakfast/videomamba_tiny/run_f32x224.sh": (2e-4, 70, 32, 32, (4, 3)),
    "breakfast/videomamba_tiny/run_f64x224.sh": (2e-4, 70, 16, 64, (4, 3)),
    "breakfast/videomamba_small/run_f32x224.sh": (2e-4, 50, 16, 32, (4, 3)),
    "breakfast/videomamba_small/run_f64x224.sh": (2e-4, 50, 8, 64, (4, 3)),
    "breakfast/videomamba_middle/run_f32x224.sh": (2e-4, 50, 8, 32, (4, 3)),
    "breakfast/videomamba_middle/run_f64x224.sh": (2e-4, 50, 4, 64, (4, 3)),
    "breakfast/videomamba_middle_mask/run_f32x224.sh": (2e-4, 45, 8, 32, (4, 3)),
    "breakfast/videomamba_middle_mask/run_f64x224.sh": (2e-4, 45, 4, 64, (4, 3)),
    "coin/videomamba_tiny/run_f32x224.sh": (2e-4, 40, 32, 32, (10, 3)),
    "coin/videomamba_tiny/run_f64x224.sh": (2e-4, 40, 16, 64, (10, 3)),
    "coin/videomamba_small/run_f32x224.sh": (2e-4, 35, 16, 32, (10, 3)),
    "coin/videomamba_small/run_f64x224.sh": (2e-4, 35, 8, 64, (10, 3)),
    "coin/videomamba_middle/run_f32x224.sh": (2e-4, 30, 8, 32, (10, 3)),
    "coin/videomamba_middle/run_f64x224.sh": (2e-4, 30, 4, 64, (10, 3)),
    "coin/videomamba_middle_mask/run_f32x224.sh": (2e-4, 30, 8, 32, (10, 3)),
    "coin/videomamba_middle_mask/run_f64x224.sh": (2e-4, 30, 4, 64, (10, 3)),
    "k400/videomamba_tiny/run_f8x224.sh": (2e-4, 70, 64, 8, (4, 3)),
    "k400/videomamba_tiny/run_f16x224.sh": (2e-4, 70, 64, 16, (4, 3)),
    "k400/videomamba_tiny/run_f32x224.sh": (2e-4, 70, 32, 32, (4, 3)),
    "k400/videomamba_tiny/run_f64x224.sh": (2e-4, 70, 16, 64, (4, 3)),
    "k400/videomamba_tiny/run_f64x224to384.sh": (5e-6, 10, 6, 64, (4, 3)),
    "k400/videomamba_small/run_f8x224.sh": (2e-4, 50, 64, 8, (4, 3)),
    "k400/videomamba_small/run_f16x224.sh": (2e-4, 50, 32, 16, (4, 3)),
    "k400/videomamba_small/run_f32x224.sh": (2e-4, 50, 16, 32, (4, 3)),
    "k400/videomamba_small/run_f64x224.sh": (2e-4, 50, 8, 64, (4, 3)),
    "k400/videomamba_small/run_f64x224to384.sh": (5e-6, 6, 2, 64, (4, 3)),
    "k400/videomamba_middle/run_f8x224.sh": (2e-4, 50, 32, 8, (4, 3)),
    "k400/videomamba_middle/run_f16x224.sh": (1e-4, 50, 16, 16, (4, 3)),
    "k400/videomamba_middle/run_f32x224.sh": (1e-4, 50, 8, 32, (4, 3)),
    "k400/videomamba_middle/run_f64x224.sh": (1e-4, 50, 4, 64, (4, 3)),
    "k400/videomamba_middle/run_f64x224to384.sh": (5e-6, 6, 1, 64, (4, 3)),
    "k400/videomamba_middle_mask/run_f8x224.sh": (1e-4, 45, 32, 8, (4, 3)),
    "k400/videomamba_middle_mask/run_f16x224.sh": (1e-4, 45, 16, 16, (4, 3)),
    "k400/videomamba_middle_mask/run_f32x224.sh": (1e-4, 45, 8, 32, (4, 3)),
    "k400/videomamba_middle_mask/run_f64x224.sh": (1e-4, 45, 4, 64, (4, 3)),
    "k400/videomamba_middle_mask/run_f64x224to384.sh": (5e-6, 6, 1, 64, (4, 3)),
    "k400/videomamba_middle_mask/run_mask_pretrain.sh": (1.5e-4, 801, 64, 8, None),
    "ssv2/videomamba_tiny/run_f8x224.sh": (4e-4, 35, 64, 8, (2, 3)),
    "ssv2/videomamba_tiny/run_f16x224.sh": (4e-4, 35, 64, 16, (2, 3)),
    "ssv2/videomamba_tiny/run_f16x224to288.sh": (5e-6, 10, 32, 16, (2, 3)),
    "ssv2/videomamba_small/run_f8x224.sh": (4e-4, 30, 64, 8, (2, 3)),
    "ssv2/videomamba_small/run_f16x224.sh": (4e-4, 30, 32, 16, (2, 3)),
    "ssv2/videomamba_small/run_f16x224to288.sh": (5e-6, 10, 12, 16, (2, 3)),
    "ssv2/videomamba_middle/run_f8x224.sh": (4e-4, 30, 32, 8, (2, 3)),
    "ssv2/videomamba_middle/run_f16x224.sh": (4e-4, 30, 16, 16, (2, 3)),
    "ssv2/videomamba_middle/run_f16x224to288.sh": (5e-6, 10, 6, 16, (2, 3)),
    "ssv2/videomamba_middle_mask/run_f8x224.sh": (1e-4, 30, 32, 8, (2, 3)),
    "ssv2/videomamba_middle_mask/run_f16x224.sh": (1e-4, 30, 16, 16, (2, 3)),
    "ssv2/videomamba_middle_mask/run_f16x224to288.sh": (5e-6, 10, 6, 16, (2, 3)),
    "ssv2/videomamba_middle_mask/run_mask_pretrain.sh": (1.5e-4, 801, 64, 8, None),
    "lvu/run_class.sh": (4e-4, 70, 8, 32, (4, 3)),
    "lvu/run_class_trim.sh": (4e-4, 70, 8, 32, (4, 3)),
    "lvu/run_regression.sh": (4e-4, 70, 8, 32, (4, 3)),
    "lvu/run_regression_trim.sh": (4e-4, 70, 8, 32, (4, 3)),
}


def test_every_launcher_sets_the_published_recipe(sandbox: Path) -> None:
    """lr, epochs, batch size, frames and test views of each launcher, as its entry script parses them."""
    assert sorted(PUBLISHED) == LAUNCHERS
    parsers = _entry_parsers()
    for rel in LAUNCHERS:
        words = _launch_words(rel, _paths(sandbox))
        args = parsers[words[0]].parse_args(words[1:] + ["--output_dir", "out"])
        views = None if words[0] == "run_mask_pretrain.py" else (args.test_num_segment, args.test_num_crop)
        assert (args.lr, args.epochs, args.batch_size, args.num_frames, views) == PUBLISHED[rel], rel


def test_launchers_use_the_repository_venv_without_activation(sandbox: Path, tmp_path: Path) -> None:
    """With the repository's .venv present, torchrun and (slurm) python are its own: nothing needs activating, no
    torchrun on PATH is needed. TORCHRUN / PYTHON still override."""
    repo = tmp_path / "repo"
    shutil.copytree(sandbox / "repo", repo)
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    for tool in ("torchrun", "python"):
        (venv / tool).write_text(FAKE_TOOL.replace("$(basename \"$0\")", f"venv_{tool}"))
        (venv / tool).chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text('#!/usr/bin/env bash\nexec "${@: -$(( $# - 7 ))}"\n')  # runs its command
    (tmp_path / "bin" / "srun").chmod(0o755)
    rel = "k400/videomamba_tiny/run_f8x224.sh"
    base = {**_paths(sandbox), "HOME": os.environ.get("HOME", "/tmp"), "RECORD_DIR": str(tmp_path),
            "OUTPUT_DIR": str(tmp_path / "out"), "GPUS": "1", "PATH": f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin"}
    if shutil.which("torchrun", path=base["PATH"]) is not None:
        pytest.skip("this machine has a torchrun in /usr/bin or /bin")

    def launch(**extra: str) -> subprocess.CompletedProcess:
        for record in tmp_path.glob("*.args"):
            record.unlink()
        return subprocess.run(["bash", str(repo / "exp" / rel)], env={**base, **extra}, capture_output=True,
                              text=True, timeout=30)

    result = launch()
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "venv_torchrun.args").read_text().splitlines()[5] == _launch_words(rel, base)[0]
    result = launch(PARTITION="p")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "venv_python.args").read_text().splitlines()[:2] == ["-u", _launch_words(rel, base)[0]]
    assert launch(TORCHRUN="torchrun").returncode != 0  # an explicit TORCHRUN wins: none on this PATH
    assert not (tmp_path / "venv_torchrun.args").exists()
