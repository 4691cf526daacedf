"""The typed configuration of a run: frozen dataclasses per concern, built once from the parsed flags.

``finetune_config(args)`` (``run_class_finetuning.py``) and ``pretrain_config(args)`` (``run_mask_pretrain.py``) are
the only places that read the argparse Namespace; every builder takes these dataclasses (or explicit keyword
arguments) and has no defaults of its own. Field names are the official flag names wherever a flag exists. Derived
values are computed here, once: the task (``--task``; ``--nb_classes 1`` is regression and nothing else), no
mixup/cutmix/label smoothing for regression, the ``--aa`` spellings of "off", the linearly scaled lr (``lr_scale``:
total batch × ``--num_sample`` / 256 unless ``--no_lr_scale``; the world size comes from the launcher's variables, as
``utils.distributed.init_distributed`` reads them), the first lr of the warm-up (pretraining: 0, as the official
script), ``--weight_decay_end`` (default: ``--weight_decay``), the teacher's attention (``--mask_type attention``
needs it), and the grad scaler of the plain PyTorch runtime (as the official scripts: fine-tuning unless
``--no_amp``, pretraining always; on every device, bf16 included). The environment variables that are fallbacks of
flags are read where they take effect, once each: ``models.ops.get_backend`` (``$VIDEOMAMBA_SCAN_BACKEND``, when
``--scan_backend`` is not given) and ``models.clip_teacher.default_clip_weights`` (``$VIDEOMAMBA_CLIP_DIR``, when
``--clip_teacher_path`` is not given).
``checkpoint_args`` gives the official ``args`` entry of checkpoints; ``dataclasses.asdict`` the typed one.
This module imports nothing from ``datasets/``, ``models/`` or ``engines/``, which all import it.
"""
from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from typing import Any

from utils.distributed import launcher_env
from utils.errors import UsageError

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class DataConfig:
    """Where the videos are listed and how a clip is read (both entry scripts)."""

    data_path: str
    prefix: str
    split: str
    video_backend: str
    num_frames: int
    sampling_rate: int
    num_sample: int  # repeated augmentation: training clips per decoded video
    max_bad_fraction: float
    max_retries: int


@dataclass(frozen=True)
class VideoSetConfig(DataConfig):
    """Fine-tuning lists: the ``--data_set`` kind, labels, trimmed windows and test segments."""

    data_set: str
    nb_classes: int
    regression: bool  # float labels
    frame_folders: bool  # --no_use_decord: SSV2 from extracted frame folders
    filename_tmpl: str
    trimmed: int  # seconds per window for the trimmed data sets (0: whole videos)
    time_stride: int
    test_num_segment: int


@dataclass(frozen=True)
class PretrainDataConfig(DataConfig):
    """Pretraining clips: ``num_segments`` > 1 draws one frame per segment."""

    num_segments: int


@dataclass(frozen=True)
class AugmentConfig:
    """Fine-tuning transforms (train, validation, multi-crop test), mixup/cutmix and label smoothing."""

    input_size: int
    short_side_size: int
    aa: str | None  # RandAugment policy, None when off
    train_interpolation: str
    train_crop_scale: tuple[float, float]
    reprob: float
    remode: str
    recount: int
    test_num_crop: int
    mixup: float
    cutmix: float
    cutmix_minmax: tuple[float, ...] | None
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    smoothing: float


@dataclass(frozen=True)
class PretrainAugmentConfig:
    """Pretraining transform: multi-scale crop to ``input_size``, colour jitter, flip."""

    input_size: int
    flip: bool
    color_jitter: float


@dataclass(frozen=True)
class ModelConfig:
    """The backbone as ``timm.create_model`` builds it (both entry scripts)."""

    model: str
    input_size: int
    num_frames: int
    tubelet_size: int
    depth: int | None  # None: the registered size
    embed_dim: int | None
    drop_path: float
    use_checkpoint: bool
    checkpoint_num: int
    scan_backend: str | None  # --scan_backend (models.ops.BACKENDS); None: the process default
    mamba_dt_init: bool  # keep Mamba's dt_proj init (official: the blanket Linear init overwrites it)


@dataclass(frozen=True)
class ClassifierConfig(ModelConfig):
    """The fine-tuned classifier / regressor and its initial weights (``--finetune``)."""

    nb_classes: int
    drop: float
    fc_drop_rate: float
    finetune: str
    delete_head: bool
    model_key: str
    model_prefix: str
    label_map: str | None
    orig_t_size: int
    trust_checkpoint: bool  # --finetune may need a full unpickle


@dataclass(frozen=True)
class StudentConfig(ModelConfig):
    """The masked-pretraining student and its CLIP-space decoders."""

    clip_decoder_embed_dim: int | None
    clip_output_dim: int
    clip_norm_type: str
    clip_return_layer: int
    clip_student_return_interval: float


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen CLIP teacher: architecture, weights (``None`` with ``clip_teacher_random``) and outputs."""

    clip_teacher: str
    clip_teacher_path: str | None  # the flag's file, else None
    clip_teacher_random: bool
    clip_teacher_width: int | None  # size overrides (demos, tests)
    clip_teacher_layers: int | None
    clip_teacher_heads: int | None
    clip_input_resolution: int
    clip_output_dim: int
    clip_norm_type: str
    tubelet_size: int
    clip_return_attn: bool  # --clip_return_attn, or needed by --mask_type attention
    clip_return_layer: int
    clip_return_interval: float
    clip_return_cls: bool


@dataclass(frozen=True)
class DistillConfig:
    """Masked distillation: which tokens are masked and how the student is compared with the teacher."""

    mask_type: str
    mask_ratio: float
    clip_loss_type: str
    clip_loss_ratio: float
    clip_input_resolution: int
    clip_input_norm: str
    clip_return_cls: bool  # the teacher's cls feature is a target too


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, parameter groups and the per-step schedules; ``lr``, ``min_lr``, ``warmup_lr`` are scaled."""

    opt: str
    opt_eps: float
    opt_betas: tuple[float, ...] | None
    momentum: float
    clip_grad: float | None
    weight_decay: float
    weight_decay_end: float
    layer_decay: float
    layer_decay_mode: str
    epochs: int
    lr: float
    min_lr: float
    warmup_lr: float
    warmup_start: float  # first lr of the warm-up
    warmup_epochs: int
    warmup_steps: int
    lr_scale: float  # the factor applied to the --lr, --min_lr, --warmup_lr given


@dataclass(frozen=True)
class EmaConfig:
    """Exponential moving average of the weights (``--model_ema``)."""

    model_ema_decay: float
    model_ema_force_cpu: bool


@dataclass(frozen=True)
class RuntimeConfig:
    """Processes, devices, precision, loaders, checkpoints and logging."""

    device: str
    dist_url: str
    dist_on_itp: bool
    world_size: int  # from the launcher's variables (1 for a plain process)
    seed: int
    batch_size: int
    update_freq: int
    num_workers: int
    pin_mem: bool
    no_amp: bool
    bf16: bool
    loss_scaler: bool  # plain PyTorch runtime: every step through a GradScaler (skips steps with non-finite grads)
    enable_deepspeed: bool
    zero_stage: int
    output_dir: str
    log_dir: str | None
    resume: str
    auto_resume: bool
    trust_checkpoint: bool  # --resume / --eval checkpoints may need a full unpickle
    start_epoch: int
    save_ckpt: bool
    save_ckpt_freq: int
    save_ckpt_steps: int
    save_ckpt_minutes: float
    print_freq: int


@dataclass(frozen=True)
class EvalConfig:
    """Validation during fine-tuning, the final multi-view test and ``--eval``."""

    validate: bool  # not --disable_eval_during_finetuning
    eval: bool
    test_best: bool
    dist_eval: bool


@dataclass(frozen=True)
class FinetuneConfig:
    """``run_class_finetuning.py``."""

    task: str  # classification | regression
    data: VideoSetConfig
    augment: AugmentConfig
    model: ClassifierConfig
    ema: EmaConfig | None
    optim: OptimConfig
    runtime: RuntimeConfig
    evaluation: EvalConfig


@dataclass(frozen=True)
class PretrainConfig:
    """``run_mask_pretrain.py``."""

    data: PretrainDataConfig
    augment: PretrainAugmentConfig
    model: StudentConfig
    teacher: TeacherConfig
    distill: DistillConfig
    optim: OptimConfig
    runtime: RuntimeConfig


def _fields(cls: type, args: Namespace, **derived: Any) -> Any:
    """``cls`` from the flags of the same names, ``derived`` values given explicitly."""
    names = [name for name in cls.__dataclass_fields__ if name not in derived]
    return cls(**{name: vars(args)[name] for name in names}, **derived)


def task_of(args: Namespace) -> str:
    """``--task``, else implied by ``--nb_classes`` (1: regression), checked against it."""
    if args.task is None:
        return "regression" if args.nb_classes == 1 else "classification"
    if args.task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {args.task!r}")
    if args.task == "regression" and args.nb_classes != 1:
        raise UsageError(f"--task regression needs --nb_classes 1, got {args.nb_classes}")
    if args.task == "classification" and args.nb_classes < 2:
        raise UsageError("--task classification needs --nb_classes >= 2 (--nb_classes 1 is regression)")
    return args.task


def aa_policy(value: str | None) -> str | None:
    """``--aa`` with the spellings of "off" (None, "", "none") mapped to None."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    return str(value)


def world_size(args: Namespace) -> int:
    """Processes of the run, from the launcher's variables (``--dist_on_itp``: OpenMPI's)."""
    found = launcher_env(openmpi=args.dist_on_itp)
    return 1 if found is None else found[1]


def runtime_config(args: Namespace, *, loss_scaler: bool) -> RuntimeConfig:
    return _fields(RuntimeConfig, args, world_size=world_size(args), loss_scaler=loss_scaler)


def optim_config(args: Namespace, *, lr_scale: float, warmup_from_zero: bool) -> OptimConfig:
    """The optimiser flags with ``--lr``/``--min_lr``/``--warmup_lr`` multiplied by ``lr_scale``; the warm-up
    starts at 0 with ``warmup_from_zero``, else at the scaled ``--warmup_lr``."""
    lr, min_lr, warmup_lr = args.lr * lr_scale, args.min_lr * lr_scale, args.warmup_lr * lr_scale
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    betas = tuple(args.opt_betas) if args.opt_betas is not None else None
    return _fields(OptimConfig, args, lr=lr, min_lr=min_lr, warmup_lr=warmup_lr,
                   warmup_start=0.0 if warmup_from_zero else warmup_lr, weight_decay_end=wd_end, opt_betas=betas,
                   lr_scale=lr_scale)


def linear_lr_scale(args: Namespace, runtime: RuntimeConfig) -> float:
    """The official linear rule: batch_size × update_freq × world size × num_sample / 256 (1: --no_lr_scale)."""
    if args.no_lr_scale:
        return 1.0
    return runtime.batch_size * runtime.update_freq * runtime.world_size * args.num_sample / 256


def finetune_config(args: Namespace) -> FinetuneConfig:
    """The typed configuration of ``run_class_finetuning.py`` (``UsageError`` on contradicting flags)."""
    task = task_of(args)
    regression = task == "regression"
    runtime = runtime_config(args, loss_scaler=not args.no_amp)
    data = _fields(VideoSetConfig, args, regression=regression, frame_folders=not args.use_decord)
    no_mix = dict(mixup=0.0, cutmix=0.0, cutmix_minmax=None, smoothing=0.0) if regression else dict(
        cutmix_minmax=tuple(args.cutmix_minmax) if args.cutmix_minmax is not None else None)
    augment = _fields(AugmentConfig, args, aa=aa_policy(args.aa), train_crop_scale=tuple(args.train_crop_scale),
                      **no_mix)
    model = _fields(ClassifierConfig, args)
    ema = _fields(EmaConfig, args) if args.model_ema else None
    optim = optim_config(args, lr_scale=linear_lr_scale(args, runtime), warmup_from_zero=False)
    evaluation = _fields(EvalConfig, args, validate=not args.disable_eval_during_finetuning)
    return FinetuneConfig(task, data, augment, model, ema, optim, runtime, evaluation)


def pretrain_config(args: Namespace) -> PretrainConfig:
    """The typed configuration of ``run_mask_pretrain.py``: as the official pretraining script, the warm-up
    starts from 0 (``--warmup_lr`` is not used) and the grad scaler runs also with ``--no_amp``."""
    runtime = runtime_config(args, loss_scaler=True)
    teacher = _fields(TeacherConfig, args, clip_return_attn=args.clip_return_attn or args.mask_type == "attention")
    return PretrainConfig(
        data=_fields(PretrainDataConfig, args),
        augment=_fields(PretrainAugmentConfig, args),
        model=_fields(StudentConfig, args),
        teacher=teacher,
        distill=_fields(DistillConfig, args),
        optim=optim_config(args, lr_scale=linear_lr_scale(args, runtime), warmup_from_zero=True),
        runtime=runtime,
    )


def checkpoint_args(args: Namespace, config: FinetuneConfig | PretrainConfig) -> dict[str, Any]:
    """The official ``args`` entry of a checkpoint: the parsed flags with what the official scripts write back into
    their Namespace, the launcher's ``world_size``, the scaled ``lr``/``min_lr``/``warmup_lr`` and (regression) no
    mixup, cutmix or smoothing."""
    out = dict(vars(args))
    out.update(world_size=config.runtime.world_size, lr=config.optim.lr, min_lr=config.optim.min_lr,
               warmup_lr=config.optim.warmup_lr)
    if isinstance(config, FinetuneConfig):
        augment = config.augment
        minmax = list(augment.cutmix_minmax) if augment.cutmix_minmax is not None else None
        out.update(mixup=augment.mixup, cutmix=augment.cutmix, cutmix_minmax=minmax, smoothing=augment.smoothing)
    return out


# Flags that may change between runs of one experiment without changing what it trains: where outputs go, how it is
# launched, read and reported, when checkpoints are written, what is evaluated at the end, and the resume itself.
RUN_ONLY_FLAGS = frozenset({
    "output_dir", "log_dir", "resume", "auto_resume", "start_epoch", "device", "dist_url", "dist_on_itp",
    "world_size", "local_rank", "num_workers", "pin_mem", "print_freq", "debug", "save_ckpt", "save_ckpt_freq",
    "save_ckpt_steps", "save_ckpt_minutes", "max_bad_fraction", "max_retries", "video_backend", "scan_backend",
    "use_checkpoint", "checkpoint_num", "eval", "test_best", "dist_eval", "test_num_segment", "test_num_crop",
    "ignored_flags",
})


def _comparable(value: Any) -> Any:
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def changed_flags(saved: Any, current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{flag: (value in the checkpoint, value now)}`` for the flags that differ between a checkpoint's ``args``
    (``checkpoint_args``: a dict, or the official scripts' Namespace) and this run's, leaving out ``RUN_ONLY_FLAGS``
    and flags only one of them knows."""
    if isinstance(saved, Namespace):
        saved = vars(saved)
    if not isinstance(saved, dict):
        return {}
    return {name: (saved[name], value) for name, value in current.items()
            if name in saved and name not in RUN_ONLY_FLAGS and _comparable(saved[name]) != _comparable(value)}
