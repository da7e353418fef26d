"""The torchrun command a model script expands as ``$MAD_MULTI_NODE_RUNNER``."""

from __future__ import annotations

import shlex


def single_node(nproc: int) -> str:
    """madengine 2.x's single-node runner."""
    return shlex.join(["torchrun", "--standalone", f"--nproc_per_node={max(1, nproc)}"])
