"""The Docker backend: which Dockerfiles a model runs with (dockerfiles, variants), registry
credentials (registry), the card's ``additional_docker_run_options`` (run_options), and the
executor (executor) and its parts: plan, images (build/pull), container (run), daemon
(connection and sweep)."""

from pytest_madengine.executors.docker.executor import DockerExecutor
from pytest_madengine.executors.docker.plan import DockerPlan

__all__ = ["DockerExecutor", "DockerPlan"]
