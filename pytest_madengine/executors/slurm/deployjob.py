"""From a model's run (RunSpec), its merged ``slurm`` and ``distributed`` settings to the
``DeployJob`` that a ``slurm``-key deployment submits (pure: reads nothing, writes nothing).
Every problem is a UsageError naming its key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from pytest_madengine.errors import UsageError
from pytest_madengine.executors.base import RunSpec
from pytest_madengine.executors.slurm import deploy
from pytest_madengine.executors.slurm.container import NodeImage, is_registry_image
from pytest_madengine.executors.slurm.jobscript import NODE_VARS, DeployJob, NodeForm, bad_env_names, host_placeholder
from pytest_madengine.multinode.launchers import registry
from pytest_madengine.multinode.launchers.base import launcher_of

# Keys of the session's single-node launcher environment that the per-node form replaces.
LAUNCH_KEYS = ("MAD_MULTI_NODE_RUNNER", "MAD_LAUNCHER")


def user_keys(spec: RunSpec, settings: deploy.SlurmSettings) -> set[str]:
    """Variables the user set (card env_vars, docker_env_vars, slurm env_vars): they win over
    the launcher's, as on the other backends."""
    keys = {str(k) for k in spec.model.env_vars}
    keys |= {str(k) for k in spec.context.dict_of("docker_env_vars")}
    keys |= set(settings.env_vars)
    return keys


def is_slurm_multi(dist: Mapping[str, Any]) -> bool:
    return bool(dist) and launcher_of(dist) == "slurm_multi"


def node_forms(dist: Mapping[str, Any], nodes: int, gpus_per_node: int, model_name: str) -> tuple[NodeForm, ...]:
    """The launcher's output for every node rank, hosts as placeholders."""
    settings = dict(dist)
    settings["nnodes"] = nodes
    forms = []
    for rank in range(nodes):
        if nodes > 1:
            hosts = tuple(host_placeholder(i) for i in range(nodes))
            topo = registry.topology(settings, gpus=gpus_per_node, node_rank=rank, master_addr=hosts[0],
                                     hosts=hosts)
        else:
            topo = registry.topology(settings, gpus=gpus_per_node)
        launch = registry.launch(settings, topo, model_name)
        forms.append(NodeForm(env=dict(launch.env), files=dict(launch.files), setup=launch.setup))
    return tuple(forms)


def inside(where: str, value: str, base: Path, *, from_card: bool) -> Path:
    """A folder from the settings: relative to ``base``; a card's value must stay inside it."""
    p = PurePosixPath(value)
    if from_card and (p.is_absolute() or ".." in p.parts):
        raise UsageError(f"{where} (model card): {value!r} must be a path inside the checkout (relative, no '..'); "
                         "an absolute path can be given in the context")
    return Path(value) if p.is_absolute() else base / value


def build(spec: RunSpec, settings: deploy.SlurmSettings, dist: Mapping[str, Any], *, job_name: str,
          job_dir: Path, node_dir: Path, path_prefix: str, image: NodeImage | None = None) -> DeployJob:
    """``image``: the image every node's task runs in (None: on the nodes' hosts; slurm_multi
    then pulls the card's registry ``DOCKER_IMAGE_NAME``)."""
    launcher = launcher_of(dist) if dist else "torchrun"
    gpus = deploy.resolve_gpus(settings, spec.model.n_gpus)
    try:
        time_text, _ = deploy.resolve_time(settings, spec.timeout)
    except ValueError as exc:
        raise UsageError(f"{deploy.key('time')}: {exc}") from None
    mine = user_keys(spec, settings)
    env = {k: v for k, v in spec.env.items() if k not in NODE_VARS}
    env.update(settings.env_vars)
    bad = bad_env_names(env)
    if bad:
        raise UsageError(f"environment variable name {bad[0]!r} cannot be exported on the SLURM nodes "
                         "(letters, digits and _, not starting with a digit)")
    if launcher == "slurm_multi":
        forms = node_forms(dist, 1, gpus, spec.model.name)
        env.update({k: v for k, v in forms[0].env.items() if k not in mine})
        if image is not None:  # the script starts its containers from DOCKER_IMAGE_NAME: the given image
            env["DOCKER_IMAGE_NAME"] = image.image
        else:
            name = env.get("DOCKER_IMAGE_NAME", "")
            image = NodeImage(name, source="DOCKER_IMAGE_NAME") if is_registry_image(name) else None
        results = (inside(deploy.key("results_dir"), settings.results_dir, node_dir / "node0",
                          from_card=settings.results_dir_from_card) if settings.results_dir else None)
        return DeployJob(kind="slurm_multi", job_name=job_name, job_dir=job_dir, node_dir=node_dir,
                         argv=spec.command(), settings=settings, time=time_text, gpus_per_node=gpus,
                         launcher=launcher, env=env, path_prefix=path_prefix, image=image, results_dir=results)
    if launcher == "mpirun" and settings.nodes > 1:
        raise UsageError(f"distributed.launcher mpirun starts every node's ranks from node 0 itself; a SLURM job "
                         f"of {deploy.key('nodes')} {settings.nodes} runs one task per node: use torchrun "
                         "(or slurm_multi with your own script)")
    forms = node_forms(dist, settings.nodes, gpus, spec.model.name)
    launch_keys = set(LAUNCH_KEYS).union(*(f.env for f in forms))
    env = {k: v for k, v in env.items() if k not in launch_keys or k in mine}
    forms = tuple(NodeForm(env={k: v for k, v in f.env.items() if k not in mine}, files=f.files, setup=f.setup)
                  for f in forms)
    return DeployJob(kind="tasks", job_name=job_name, job_dir=job_dir, node_dir=node_dir, argv=spec.command(),
                     settings=settings, time=time_text, gpus_per_node=gpus, launcher=launcher, env=env,
                     ranks=forms, path_prefix=path_prefix, image=image, workspace=spec.workspace,
                     gpu_vendor=spec.gpu_vendor,
                     data_mounts=tuple((host, readonly) for host, _, readonly in spec.data_mounts))
