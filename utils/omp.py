"""OpenMP's wait policy, set by the entry scripts before torch (and its OpenMP runtime) starts.

OpenMP's default lets idle threads spin. Next to any busy process (a training run always has its own DataLoader
workers) that made the fused CPU kernels several times slower (README, "Performance"), so the entry scripts, when
run as scripts (``__main__``), ask for ``passive`` waiting unless the user already chose a policy; importing them,
or any library module, leaves the environment alone. Call it before ``import torch``.
"""
import os

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def prefer_passive_wait() -> str:
    """Set ``OMP_WAIT_POLICY=passive`` when the environment does not set it; returns the policy in effect."""
    return os.environ.setdefault(WAIT_POLICY_ENV, "passive")


def threads_spin() -> bool:
    """Whether the policy in effect lets idle threads spin (``OMP_WAIT_POLICY=active``), for thread pools other
    than OpenMP's (ONNX Runtime's) that should wait as eager PyTorch's threads do."""
    return os.environ.get(WAIT_POLICY_ENV, "").strip().lower() == "active"
