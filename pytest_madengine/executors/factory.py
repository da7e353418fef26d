"""The built-in backends, as the last implementation of ``pytest_mad_make_executor``."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_madengine.errors import UsageError
from pytest_madengine.executors.base import ExecutorChoice

BUILTIN = ("auto", "docker", "local", "slurm")


class BuiltinExecutors:
    @pytest.hookimpl(trylast=True)
    def pytest_mad_make_executor(self, config: pytest.Config, name: str, context: Any, options: Any,
                                 run_id: str) -> ExecutorChoice | None:
        return make(name, context, options, run_id)


def make(name: str, context: Any, options: Any, run_id: str) -> ExecutorChoice:
    """auto: SLURM when the context has ``slurm_args`` or ``slurm``, else Docker when a daemon answers,
    else the host. Imports are lazy: a run on the host never loads the Docker SDK."""
    from pytest_madengine.executors.local import LocalExecutor

    if name == "slurm" or (name == "auto" and ("slurm_args" in context or "slurm" in context)):
        from pytest_madengine.executors.slurm.executor import SlurmExecutor

        # Without either key, --mad-executor=slurm uses each model card's `slurm` (or SLURM's defaults).
        key = "slurm_args" if "slurm_args" in context else "slurm"
        return ExecutorChoice(SlurmExecutor(options, context, run_id),
                              "--mad-executor=slurm" if name == "slurm" else f"{key} in context")
    if name == "local":
        return ExecutorChoice(LocalExecutor(), "--mad-executor=local")
    if name not in ("auto", "docker"):
        raise UsageError(f"--mad-executor: no backend named {name!r}; built in: {', '.join(BUILTIN)} "
                         "(a plugin can add more through pytest_mad_make_executor)")
    try:
        from pytest_madengine.executors.docker.executor import DockerExecutor
    except ImportError as exc:  # the docker SDK is a dependency, but say so if it is broken
        if name == "docker":
            raise UsageError(f"--mad-executor=docker: cannot import the Docker SDK: {exc}") from None
        return ExecutorChoice(LocalExecutor(), f"the Docker SDK cannot be imported ({exc})")
    if name == "docker":
        return ExecutorChoice(DockerExecutor(options, context, run_id), "--mad-executor=docker")
    reachable, detail = DockerExecutor.daemon_answers()
    if reachable:
        return ExecutorChoice(DockerExecutor(options, context, run_id), f"auto: Docker daemon answers ({detail})")
    return ExecutorChoice(LocalExecutor(), f"auto: no Docker daemon ({detail})")
