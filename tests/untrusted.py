"""A checkpoint that runs code when unpickled in full, as a crafted ``.pth`` from the internet could."""
from __future__ import annotations

import pathlib
from typing import Any

import torch


class TouchOnLoad:
    """Unpickling this object creates ``marker`` (``pathlib.Path.touch``): the stand-in for any command."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = pathlib.Path(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return pathlib.Path.touch, (self.marker,)


def save_code_running_checkpoint(path: pathlib.Path, state_dict: dict[str, torch.Tensor], marker: pathlib.Path,
                                 **extra: Any) -> None:
    """An official-looking checkpoint ``{"model": state_dict, "args": <creates marker when unpickled>, **extra}``."""
    torch.save({"model": state_dict, "args": TouchOnLoad(marker), **extra}, path)
