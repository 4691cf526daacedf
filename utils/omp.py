"""OpenMP's wait policy, set by the entry points before torch (and its OpenMP runtime) starts.

OpenMP's default lets idle threads spin. Next to any busy process (a training run always has its own DataLoader
workers) that made the fused CPU kernels several times slower (README, "Performance"), so entry points ask for
``passive`` waiting unless the user already chose a policy. Import this module before ``torch``.
"""
import os

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def prefer_passive_wait() -> str:
    """Set ``OMP_WAIT_POLICY=passive`` when the environment does not set it; returns the policy in effect."""
    return os.environ.setdefault(WAIT_POLICY_ENV, "passive")
