"""Official command lines run unchanged: every flag of the three official entry scripts parses with the official
type and default, every official launcher's argument list parses, and our exp/ launchers set exactly the official
values except the deviations listed in MODEL_ZOO.md. The official flag tables and argument lists are data in
tests/data/official_flags.json."""
from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import run_class_finetuning
import run_mask_pretrain
import run_regression_finetuning
from engines.cli import IGNORED, report_ignored
from utils.distributed import launcher_env
from utils.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
DATA = json.loads((REPO / "tests" / "data" / "official_flags.json").read_text())
PARSERS = {"run_class_finetuning.py": run_class_finetuning.get_args_parser,
           "run_regression_finetuning.py": run_regression_finetuning.get_args_parser,
           "run_videomamba_pretraining.py": run_mask_pretrain.get_args_parser}
OUR_ENTRY = {"run_class_finetuning.py": "run_class_finetuning.py",
             "run_regression_finetuning.py": "run_regression_finetuning.py",
             "run_videomamba_pretraining.py": "run_mask_pretrain.py"}

# Defaults we keep different on purpose (MODEL_ZOO.md, "Differences from the official code").
DEFAULT_DEVIATIONS = {
    ("run_class_finetuning.py", "model"): "videomamba_tiny",  # official: a ViT this project does not provide
    ("run_regression_finetuning.py", "model"): "videomamba_tiny",
    ("run_videomamba_pretraining.py", "model"): "videomamba_middle_pretrain",  # official: a VideoMAE model
    ("run_regression_finetuning.py", "nb_classes"): 1,  # official 400, which its own assertion rejects
    ("run_videomamba_pretraining.py", "clip_decoder_embed_dim"): None,  # = the student's width (official 512)
}
# --flip: the official flag has no type, so "--flip False" is the truthy string "False"; ours parses a boolean.
TYPE_DEVIATIONS = {("run_videomamba_pretraining.py", "--flip"): ("True", True)}


def _sample(spec: dict) -> tuple[list[str], object]:
    """Command-line words for a store flag and the value the official parser gives them."""
    kind = spec["type"]
    if kind == "int":
        words, value = ["3"], 3
    elif kind == "float":
        words, value = ["0.5"], 0.5
    elif kind == "bool":
        words, value = ["False"], True  # type=bool: any non-empty string is True
    else:
        text = spec["default"] if isinstance(spec["default"], str) and spec["default"] else "x"
        words, value = [text], text
    if spec["nargs"] == "+":
        return words * 2, [value, value]
    return words, value


@pytest.mark.parametrize("script", sorted(DATA["entry_scripts"]))
def test_every_official_flag_parses_with_the_official_type_and_default(script):
    parser = PARSERS[script]()
    defaults = vars(parser.parse_args([]))
    table = DATA["entry_scripts"][script]
    assert len(table) > 60
    for flag, spec in table.items():
        dest = spec["dest"]
        expected = DEFAULT_DEVIATIONS.get((script, dest), spec["default"])
        assert defaults[dest] == expected, f"{script} {flag}: default {defaults[dest]!r}, official {expected!r}"
        if spec["kind"] in ("storetrue", "storefalse"):
            assert vars(parser.parse_args([flag]))[dest] is (spec["kind"] == "storetrue"), flag
        elif spec["choices"]:
            for choice in spec["choices"]:
                assert vars(parser.parse_args([flag, choice]))[dest] == choice, flag
        else:
            if (script, flag) in TYPE_DEVIATIONS:
                text, value = TYPE_DEVIATIONS[(script, flag)]
                words = [text]
            else:
                words, value = _sample(spec)
            parsed = vars(parser.parse_args([flag, *words]))[dest]
            assert parsed == value and type(parsed) is type(value), f"{script} {flag}: {parsed!r} != {value!r}"


@pytest.mark.parametrize("flags", [["--deepspeed"], ["--deepspeed_config", "ds.json"], ["--deepscale"],
                                   ["--deepscale_config", "ds.json"]])
def test_deepspeed_config_arguments_are_accepted(flags):
    """The official script adds deepspeed.add_config_arguments under --enable_deepspeed."""
    args = run_class_finetuning.get_args_parser().parse_args(["--enable_deepspeed", *flags])
    assert report_ignored(args) == [flags[0]]


@pytest.mark.parametrize("launcher", DATA["launchers"], ids=[item["launcher"] for item in DATA["launchers"]])
def test_official_launcher_command_line_parses(launcher):
    args = PARSERS[launcher["entry"]]().parse_args(launcher["argv"])
    assert args.tubelet_size == 1 and args.output_dir == "OUTPUT_DIR"
    if launcher["entry"] != "run_videomamba_pretraining.py":
        assert args.layer_decay == float(dict(zip(launcher["argv"], launcher["argv"][1:])).get("--layer_decay",
                                                                                                 0.75))
        assert args.layer_decay_mode == "official" and report_ignored(args) == []
    else:
        assert args.num_segments == 8 and args.mask_type == "attention" and args.layer_decay == 1.0


# Our exp/ launchers differ from the official ones only in paths and these documented corrections.
PATH_KEYS = {"data_path", "prefix", "finetune", "output_dir", "log_dir", "clip_teacher_path", "ignored_flags"}
LAUNCHER_DEVIATIONS = {
    "k400/videomamba_tiny/run_f64x224to384.sh": {"model"},  # official: videomamba_small
    "ssv2/videomamba_tiny/run_f16x224to288.sh": {"model", "num_frames", "orig_t_size"},  # official: S, 64 frames
    "ssv2/videomamba_middle_mask/run_f16x224to288.sh": {"data_set", "split"},  # official: Kinetics_sparse, ","
    "ssv2/videomamba_middle/run_f16x224to288.sh": {"orig_t_size"},  # 16 written out; no effect (16-entry table)
    "coin/videomamba_middle_mask/run_f64x224.sh": {"test_num_segment"},  # published 64x3x10 (official 4)
    "lvu/run_regression.sh": {"data_set"},  # the official pair is swapped
    "lvu/run_regression_trim.sh": {"data_set"},
}


def _our_launch_words(rel: str) -> list[str]:
    text = (REPO / "exp" / rel).read_text()
    block = text[text.index("\nlaunch ") + 1:]
    for name in ("DATA_PATH", "PREFIX", "MODEL_PATH", "CLIP_TEACHER_PATH"):
        block = block.replace(f'"${name}"', name)
    words = shlex.split(block.replace("\\\n", " "))
    assert words[0] == "launch" and words[-1] == "$@"
    return words[1:-1]


@pytest.mark.parametrize("launcher", DATA["launchers"], ids=[item["launcher"] for item in DATA["launchers"]])
def test_our_launcher_sets_the_official_values(launcher):
    words = _our_launch_words(launcher["launcher"])
    assert words[0] == OUR_ENTRY[launcher["entry"]]
    parser = PARSERS[launcher["entry"]]()
    ours = vars(parser.parse_args(words[1:] + ["--output_dir", "OUTPUT_DIR", "--log_dir", "OUTPUT_DIR"]))
    official = vars(parser.parse_args(launcher["argv"]))
    differ = {k for k in ours if ours[k] != official[k]} - PATH_KEYS
    assert differ == LAUNCHER_DEVIATIONS.get(launcher["launcher"], set()), launcher["launcher"]


def test_ignored_flags_are_logged_once(caplog):
    argv = ["--attn_drop_rate", "0.1", "--use_cls", "--init_scale", "0.1", "--crop_pct", "0.9", "--use_cls"]
    args = run_class_finetuning.get_args_parser().parse_args(argv)
    assert args.use_mean_pooling is False and args.attn_drop_rate == 0.1
    with caplog.at_level(logging.WARNING, logger="engines.cli"):
        assert report_ignored(args) == ["--attn_drop_rate", "--crop_pct", "--init_scale", "--use_cls"]
    records = [r for r in caplog.records if IGNORED in r.getMessage()]
    assert len(records) == 1 and "--use_cls" in records[0].getMessage()
    pretrain = run_mask_pretrain.get_args_parser().parse_args(["--normlize_target", "False", "--decoder_depth", "2",
                                                               "--clip_decoder_type", "x", "--use_decord", "False"])
    assert report_ignored(pretrain) == ["--clip_decoder_type", "--decoder_depth", "--normlize_target",
                                        "--use_decord"]


def test_dist_on_itp_reads_openmpi_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "5")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "16")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    assert launcher_env(openmpi=True) == (5, 16, 1)
    assert launcher_env() is None  # only with --dist_on_itp
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_RANK")
    with pytest.raises(UsageError, match="--dist_on_itp .* OpenMPI, but OMPI_COMM_WORLD_LOCAL_RANK is not set"):
        launcher_env(openmpi=True)


def test_official_pretraining_command_runs_unchanged_through_the_alias_script(tmp_path):
    """run_videomamba_pretraining.py takes the official launcher's arguments and gets past parsing into training
    set-up (which stops here at the missing CLIP teacher weights)."""
    launcher = next(item for item in DATA["launchers"] if item["entry"] == "run_videomamba_pretraining.py")
    (tmp_path / "train.csv").write_text("a.mp4 0\n")
    paths = {"OUTPUT_DIR": str(tmp_path), "DATA_PATH": str(tmp_path / "train.csv"), "PREFIX": str(tmp_path)}
    argv = [paths.get(word, word) for word in launcher["argv"]]
    env = {k: v for k, v in os.environ.items() if k not in ("VIDEOMAMBA_CLIP_DIR", "RANK", "WORLD_SIZE")}
    result = subprocess.run([sys.executable, str(REPO / "run_videomamba_pretraining.py"), *argv, "--device", "cpu"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]  # a usage error, reported in one line
    assert "unrecognized arguments" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: no CLIP ViT-B/16 weights given")
    saved = json.loads((tmp_path / "args.json").read_text())
    assert saved["num_segments"] == 8 and saved["clip_student_return_interval"] == 1.0 and saved["flip"] is True
