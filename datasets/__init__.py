"""Video lists, readers, frame sampling, transforms and the datasets of fine-tuning and masked pretraining.

``from datasets import build_dataset`` works as in the official code; it is imported on first use, so that the
light modules (lists, readers, sampling) used by the tools do not pull in torch.
"""
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "build_dataset":
        from datasets.build import build_dataset

        return build_dataset
    raise AttributeError(f"module 'datasets' has no attribute {name!r}")
