"""Two execution paths behind one interface (``engines.contracts.Runtime``): plain PyTorch (DDP + torch.amp) and
DeepSpeed. Each knows its checkpoint layout in the output folder: ``{tag}.pth`` files, or DeepSpeed folders
``{tag}/`` (``checkpoint_path``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from engines import checkpoint as ckpt
from utils.config import OptimConfig, RuntimeConfig
from utils.distributed import barrier, get_world_size
from utils.errors import BadFileError
from utils.safe_load import load_torch_file

logger = logging.getLogger(__name__)


def amp_dtype(device: torch.device, no_amp: bool, bf16: bool) -> torch.dtype | None:
    """Autocast dtype: None (fp32) with ``--no_amp``; bf16 with ``--bf16``; fp16 on CUDA otherwise; fp32 on CPU."""
    if no_amp:
        return None
    if bf16:
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def _output_path(output_dir: Path | None, name: str) -> Path:
    if output_dir is None:
        raise ValueError(f"{name}: this runtime has no output folder (--output_dir)")
    return output_dir / name


class TorchRuntime:
    """Plain PyTorch: optional DDP, autocast, clipping, gradient accumulation; checkpoints ``output_dir/{tag}.pth``
    (``output_dir`` None: none), read weights-only unless ``trust_checkpoint``.

    ``loss_scaling``: every step goes through a ``torch.amp.GradScaler``, as the official
    ``NativeScalerWithGradNormCount`` (whatever the dtype): the loss is scaled, the gradients unscaled before clipping
    and the norm; a step whose gradients are not finite is skipped (weights and optimiser state unchanged) and the
    scale halves; 2000 finite steps in a row double it. fp16 autocast needs it.
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 dtype: torch.dtype | None, clip_grad: float | None, distributed: bool,
                 find_unused_parameters: bool = False, output_dir: str | Path | None = None,
                 loss_scaling: bool = False, trust_checkpoint: bool = False) -> None:
        if dtype == torch.float16 and not loss_scaling:
            raise ValueError("fp16 autocast needs loss scaling (loss_scaling=True)")
        self.output_dir = Path(output_dir) if output_dir else None
        self.trust_checkpoint = trust_checkpoint
        self.module = module.to(device)
        self.device = device
        self.optimizer = optimizer
        self.dtype = dtype
        self.clip_grad = clip_grad
        self.scaler = torch.amp.GradScaler(device.type, enabled=loss_scaling)
        self.input_dtype: torch.dtype | None = None
        if distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
        else:
            self.model = module

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, update: bool, accumulation: int) -> float | None:
        """Backward ``loss / accumulation``; on ``update`` unscale, clip, step (skipped by the scaler when a gradient
        is not finite) and zero grads. Returns the grad norm (inf or nan for a skipped step)."""
        sync = update or not isinstance(self.model, DistributedDataParallel)
        ctx = contextlib.nullcontext() if sync else self.model.no_sync()
        with ctx:
            self.scaler.scale(loss / accumulation).backward()
        if not update:
            return None
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.clip_grad if self.clip_grad is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def loss_scale(self) -> float:
        """The scaler's current scale; 0 without one (the official value without a scaler)."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def checkpoint_path(self, tag: str) -> Path:
        return _output_path(self.output_dir, f"{tag}.pth")

    def save(self, tag: str, client_state: dict[str, Any], is_main: bool) -> None:
        if is_main:
            ckpt.save_atomic({**self.state_dict(), **client_state}, self.checkpoint_path(tag))

    def load(self, path: Path, model_only: bool = False) -> dict[str, Any]:
        """Load a checkpoint written by ``save`` (or the official script); returns the whole dict (epoch, args,
        RNG states...). ``model_only`` loads the weights alone (evaluation)."""
        state = ckpt.read(path, self.trust_checkpoint)
        if "model" not in state:
            raise BadFileError(f"{path}: no 'model' entry in this checkpoint (keys: {sorted(map(str, state))[:10]})")
        ckpt.check_fits(path, state["model"], self.module)
        if model_only:
            self.module.load_state_dict(state["model"])
        else:
            self.load_state_dict(state)
        return state


def deepspeed_config(optim: OptimConfig, run: RuntimeConfig) -> dict[str, Any]:
    """DeepSpeed config: micro batch, accumulation, clipping, ZeRO stage, fp16/bf16."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": run.batch_size,
        "gradient_accumulation_steps": run.update_freq,
        "train_batch_size": run.batch_size * run.update_freq * run.world_size,
        "steps_per_print": 10**9,
        "zero_optimization": {"stage": run.zero_stage},
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    if optim.clip_grad is not None:
        cfg["gradient_clipping"] = optim.clip_grad
    if not run.no_amp and run.bf16:
        cfg["bf16"] = {"enabled": True}
    elif not run.no_amp and run.device.startswith("cuda"):
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                       "hysteresis": 2, "min_loss_scale": 1}
    return cfg


def deepspeed_safe_globals() -> list[Any]:
    """DeepSpeed's own types in its ZeRO optimiser-state files, allowed for weights-only loading: a loss-scaler
    object (its attributes are restored from a dict), a stage enum (built from its value) and a fragment-address
    dataclass (built from two ints); none calls a function that the file names."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class DeepSpeedRuntime:
    """DeepSpeed engine (ZeRO 0/1/2, fp16/bf16 from its config); checkpoints are folders ``output_dir/{tag}``
    written by ``engine.save_checkpoint``.

    DeepSpeed reads checkpoint files with a full unpickle; this engine's checkpoint reader is replaced by
    ``utils.safe_load.load_torch_file`` (weights-only, with ``deepspeed_safe_globals``; a full unpickle only with
    ``trust_checkpoint``), so resuming never runs code from a file either."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 config: dict[str, Any], output_dir: str | Path | None = None, trust_checkpoint: bool = False) -> None:
        import deepspeed

        self.output_dir = Path(output_dir) if output_dir else None
        if get_world_size() == 1:
            # One process needs no shared-memory collectives; skipping them avoids a minutes-long JIT build.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.device = device
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module.to(device), optimizer=optimizer, config=config, dist_init_required=False)
        self.module = self.engine.module
        self.model = self.engine
        self.trust_checkpoint = trust_checkpoint
        allowed = deepspeed_safe_globals()
        self.engine.checkpoint_engine.load = lambda path, map_location=None: load_torch_file(
            path, trust_checkpoint, map_location, allowed)
        self.dtype = torch.bfloat16 if config.get("bf16", {}).get("enabled") else (
            torch.float16 if config.get("fp16", {}).get("enabled") else None)
        self.input_dtype = self.dtype
        logger.info("DeepSpeed engine: ZeRO stage %d, dtype %s", config["zero_optimization"]["stage"], self.dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward_step(self, loss: torch.Tensor, update: bool, accumulation: int) -> float | None:
        """DeepSpeed scales by the accumulation count itself and steps at the accumulation boundary."""
        self.engine.backward(loss)
        self.engine.step()
        if not update:
            return None
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    @property
    def loss_scale(self) -> float:
        """The optimiser's ``loss_scale``, else its ``cur_scale``; 0 when neither can be read (the official rule)."""
        optimizer = self.optimizer
        try:
            return float(optimizer.loss_scale if hasattr(optimizer, "loss_scale") else optimizer.cur_scale)
        except Exception:  # DeepSpeed's optimisers differ; the official code logs 0 then
            return 0.0

    def checkpoint_path(self, tag: str) -> Path:
        return _output_path(self.output_dir, tag)

    def save(self, tag: str, client_state: dict[str, Any], is_main: bool) -> None:
        """DeepSpeed writes into a hidden staging folder, which then replaces ``output_dir/tag``
        (``engines.checkpoint.install_folder``): a kill mid-save leaves the previous checkpoint complete."""
        target = self.checkpoint_path(tag)
        staging = ckpt.staging_folder(target.parent, tag)
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)
        barrier()
        self.engine.save_checkpoint(str(target.parent), tag=staging.name, client_state=client_state,
                                    save_latest=False)
        barrier()
        if is_main:
            ckpt.install_folder(staging, target)
        barrier()

    def load(self, path: Path, model_only: bool = False) -> dict[str, Any]:
        path = Path(path)
        weights = ckpt.peek(path, self.trust_checkpoint).get("module")
        if weights is not None:
            ckpt.check_fits(path, weights, self.module)
        _, client_state = self.engine.load_checkpoint(str(path.parent), tag=path.name,
                                                      load_optimizer_states=not model_only,
                                                      load_lr_scheduler_states=not model_only,
                                                      load_module_only=model_only)
        if client_state is None:
            raise RuntimeError(f"{path}: DeepSpeed could not load this checkpoint")
        return client_state
