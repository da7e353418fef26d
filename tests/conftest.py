"""Marks every test with its layer (``unit``, ``e2e``) and its component, so a change can be
checked on its own slice first: ``pytest tests -m checkout``, ``-m "unit and docker"``."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# test file name (without test_ and .py) -> component markers
COMPONENTS = {
    "core": ("core",), "core_pure": ("core",), "models": ("core",), "registry": ("docker",),
    "docker": ("docker",), "docker_multinode": ("docker", "multinode"), "dockerfiles": ("docker",),
    "docker_run_options": ("docker",), "docker_plan": ("docker",), "plans": ("core",), "run_model": ("core",),
    "launchers": ("multinode",), "serving_launchers": ("multinode",), "deployment": ("multinode",), "errorscan": ("results",), "shared_checkout": ("multinode",), "around_run": ("core",), "safety": ("core",), "layers": ("core",), "private_apis": ("core",), "dry_run": ("core",), "multinode": ("multinode",), "parallel": ("parallel",),
    "parallel_pure": ("parallel",), "slurm": ("slurm",), "slurm_args": ("slurm",), "slurm_batch": ("slurm",),
    "slurm_executor": ("slurm",), "slurm_poller": ("slurm",), "slurm_records": ("slurm",),
    "slurm_deploy": ("slurm", "multinode"), "slurm_serving": ("slurm", "multinode"), "slurm_container": ("slurm", "docker"), "slurm_images": ("slurm", "docker"),
    "real_checkout": ("checkout",), "madengine_fixture": ("checkout",), "fuzz": ("reliability",), "checkout_paths": ("checkout",), "gitclone": ("checkout",),
    "metrics": ("results",), "report_columns": ("results",), "tools": ("core",),
    "data_providers": ("docker", "data"), "data_pure": ("data",),
    "build": ("docker",), "build_manifest": ("docker",),
    "output": ("results",), "process_ledger": ("core",),
    "faults": ("reliability",), "load": ("reliability",), "secrets": ("reliability",),
    "secretenv": ("docker", "slurm"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        if "tests" not in parts:
            continue
        layer = parts[parts.index("tests") + 1] if len(parts) > parts.index("tests") + 1 else ""
        if layer in ("unit", "e2e", "reliability"):
            item.add_marker(layer)
        for name in COMPONENTS.get(item.path.stem.removeprefix("test_"), ()):
            item.add_marker(name)
