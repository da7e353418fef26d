"""docker_run_options: additional_docker_run_options -> Docker SDK kwargs (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pytest_madengine.errors import MadError
from pytest_madengine.models import run_options as dro
from pytest_madengine.models.run_options import (
    DockerRunOptionsError,
    GpuRequest,
    RunOptions,
    UlimitSpec,
    VolumeBind,
    describe,
    merge_into,
    parse,
)

HOST_ENV = {"HOME": "/root", "HF_TOKEN": "hf_abc", "EMPTY": ""}


def p(text: str) -> RunOptions:
    return parse(text, HOST_ENV)


def kw(text: str) -> dict[str, Any]:
    return p(text).sdk_kwargs()


# --------------------------------------------------------------------------- every flag, every spelling

# (options text, the sdk kwargs it must produce)
FLAG_CASES: list[tuple[str, dict[str, Any]]] = [
    # --device
    ("--device=/dev/kfd", {"devices": ["/dev/kfd:/dev/kfd:rwm"]}),
    ("--device /dev/kfd", {"devices": ["/dev/kfd:/dev/kfd:rwm"]}),
    ("--device=/dev/dri:/dev/gpu", {"devices": ["/dev/dri:/dev/gpu:rwm"]}),
    ("--device=/dev/dri:rw", {"devices": ["/dev/dri:/dev/dri:rw"]}),
    ("--device /dev/dri:/dev/dri:r", {"devices": ["/dev/dri:/dev/dri:r"]}),
    ("--device=/dev/kfd --device=/dev/dri", {"devices": ["/dev/kfd:/dev/kfd:rwm", "/dev/dri:/dev/dri:rwm"]}),
    ("--device=/dev/kfd --device /dev/kfd:/dev/kfd:rwm", {"devices": ["/dev/kfd:/dev/kfd:rwm"]}),
    # -e / --env
    ("-e A=1", {"environment": {"A": "1"}}),
    ("-eA=1", {"environment": {"A": "1"}}),
    ("-e=A=1", {"environment": {"A": "1"}}),
    ("--env A=1", {"environment": {"A": "1"}}),
    ("--env=A=1", {"environment": {"A": "1"}}),
    ("-e A=x=y", {"environment": {"A": "x=y"}}),
    ("-e A=", {"environment": {"A": ""}}),
    ("-e A=1 -e A=2", {"environment": {"A": "2"}}),
    ("-e 'A=two words'", {"environment": {"A": "two words"}}),
    ("-e HOME", {"environment": {"HOME": "/root"}}),
    ("--env=HOME", {"environment": {"HOME": "/root"}}),
    ("-eHOME", {"environment": {"HOME": "/root"}}),
    ("-e EMPTY", {"environment": {"EMPTY": ""}}),
    ("-e NOT_ON_HOST", {}),
    ("-e A=1 -e NOT_ON_HOST", {"environment": {"A": "1"}}),
    # -v / --volume
    ("-v /data:/data", {"volumes": {"/data": {"bind": "/data", "mode": "rw"}}}),
    ("-v/data:/data", {"volumes": {"/data": {"bind": "/data", "mode": "rw"}}}),
    ("--volume /data:/mnt:ro", {"volumes": {"/data": {"bind": "/mnt", "mode": "ro"}}}),
    ("--volume=/data:/mnt:rw,z", {"volumes": {"/data": {"bind": "/mnt", "mode": "rw,z"}}}),
    ("-v /data:/mnt:Z", {"volumes": {"/data": {"bind": "/mnt", "mode": "Z"}}}),
    ("-v /data:/mnt:ro,rslave", {"volumes": {"/data": {"bind": "/mnt", "mode": "ro,rslave"}}}),
    ("-v /data/./x/../y/:/mnt/", {"volumes": {"/data/y": {"bind": "/mnt", "mode": "rw"}}}),
    ("-v hf-cache:/root/.cache", {"volumes": {"hf-cache": {"bind": "/root/.cache", "mode": "rw"}}}),
    ("-v /a:/a -v /b:/b:ro", {"volumes": {"/a": {"bind": "/a", "mode": "rw"}, "/b": {"bind": "/b", "mode": "ro"}}}),
    ("-v /a:/a -v /a:/a", {"volumes": {"/a": {"bind": "/a", "mode": "rw"}}}),
    # --shm-size
    ("--shm-size 16G", {"shm_size": "16G"}),
    ("--shm-size=16G", {"shm_size": "16G"}),
    ("--shm-size=64g", {"shm_size": "64g"}),
    ("--shm-size=512m", {"shm_size": "512m"}),
    ("--shm-size=1.5gb", {"shm_size": "1.5gb"}),
    ("--shm-size=1024", {"shm_size": "1024"}),
    ("--shm-size=16GiB", {"shm_size": str(16 * 1024**3)}),
    ("--shm-size=1T", {"shm_size": str(1024**4)}),
    ("--shm-size '2 k'", {"shm_size": "2048"}),
    ("--shm-size=8G --shm-size=16G", {"shm_size": "16G"}),
    # --cap-add / --cap-drop
    ("--cap-add=SYS_PTRACE", {"cap_add": ["SYS_PTRACE"]}),
    ("--cap-add SYS_PTRACE --cap-add CAP_SYS_ADMIN", {"cap_add": ["SYS_PTRACE", "CAP_SYS_ADMIN"]}),
    ("--cap-add=SYS_PTRACE --cap-add=SYS_PTRACE", {"cap_add": ["SYS_PTRACE"]}),
    ("--cap-drop=ALL", {"cap_drop": ["ALL"]}),
    ("--cap-drop NET_RAW", {"cap_drop": ["NET_RAW"]}),
    # --security-opt
    ("--security-opt seccomp=unconfined", {"security_opt": ["seccomp=unconfined"]}),
    ("--security-opt=seccomp=unconfined", {"security_opt": ["seccomp=unconfined"]}),
    ("--security-opt seccomp:unconfined", {"security_opt": ["seccomp=unconfined"]}),
    ("--security-opt=label=disable --security-opt apparmor=unconfined",
     {"security_opt": ["label=disable", "apparmor=unconfined"]}),
    ("--security-opt no-new-privileges", {"security_opt": ["no-new-privileges"]}),
    ("--security-opt=no-new-privileges:true", {"security_opt": ["no-new-privileges=true"]}),
    # --group-add
    ("--group-add video", {"group_add": ["video"]}),
    ("--group-add=video --group-add=render --group-add 44", {"group_add": ["video", "render", "44"]}),
    # --ipc
    ("--ipc=host", {"ipc_mode": "host"}),
    ("--ipc host", {"ipc_mode": "host"}),
    ("--ipc=shareable", {"ipc_mode": "shareable"}),
    ("--ipc=container:other", {"ipc_mode": "container:other"}),
    # --network / --net
    ("--network=host", {"network_mode": "host"}),
    ("--network host", {"network_mode": "host"}),
    ("--net=host", {"network_mode": "host"}),
    ("--net bridge", {"network_mode": "bridge"}),
    ("--network=my-net --net my-net", {"network_mode": "my-net"}),
    ("--network=container:peer", {"network_mode": "container:peer"}),
    # --privileged
    ("--privileged", {"privileged": True}),
    ("--privileged=true", {"privileged": True}),
    ("--privileged=True", {"privileged": True}),
    ("--privileged=1", {"privileged": True}),
    ("--privileged=false", {"privileged": False}),
    ("--privileged --privileged=false", {"privileged": False}),
    # --cpus
    ("--cpus=2", {"nano_cpus": 2_000_000_000}),
    ("--cpus 2.5", {"nano_cpus": 2_500_000_000}),
    ("--cpus=.5", {"nano_cpus": 500_000_000}),
    ("--cpus=0.000000001", {"nano_cpus": 1}),
    ("--cpus=0.1", {"nano_cpus": 100_000_000}),  # exact, not float-rounded
    # --memory / -m
    ("--memory=64g", {"mem_limit": "64g"}),
    ("--memory 64g", {"mem_limit": "64g"}),
    ("-m 64g", {"mem_limit": "64g"}),
    ("-m64g", {"mem_limit": "64g"}),
    ("-m=64g", {"mem_limit": "64g"}),
    # --memory-swap
    ("--memory-swap=128g", {"memswap_limit": "128g"}),
    ("--memory-swap -1", {"memswap_limit": "-1"}),
    # --user / -u
    ("--user=root", {"user": "root"}),
    ("--user 1000:1000", {"user": "1000:1000"}),
    ("-u root", {"user": "root"}),
    ("-u0", {"user": "0"}),
    # --pid
    ("--pid=host", {"pid_mode": "host"}),
    ("--pid host", {"pid_mode": "host"}),
    ("--pid=container:other", {"pid_mode": "container:other"}),
    # --hostname / -h
    ("--hostname=node0", {"hostname": "node0"}),
    ("--hostname node0.cluster", {"hostname": "node0.cluster"}),
    ("-h node0", {"hostname": "node0"}),
    # --add-host
    ("--add-host=db:10.0.0.5", {"extra_hosts": {"db": "10.0.0.5"}}),
    ("--add-host db:10.0.0.5", {"extra_hosts": {"db": "10.0.0.5"}}),
    ("--add-host=db=10.0.0.5", {"extra_hosts": {"db": "10.0.0.5"}}),
    ("--add-host=v6:::1", {"extra_hosts": {"v6": "::1"}}),
    ("--add-host=v6=[fe80::1]", {"extra_hosts": {"v6": "fe80::1"}}),
    ("--add-host=gw:host-gateway", {"extra_hosts": {"gw": "host-gateway"}}),
    ("--add-host a:1.1.1.1 --add-host b:2.2.2.2", {"extra_hosts": {"a": "1.1.1.1", "b": "2.2.2.2"}}),
    # --tmpfs
    ("--tmpfs /run", {"tmpfs": {"/run": ""}}),
    ("--tmpfs=/run:rw,size=1g", {"tmpfs": {"/run": "rw,size=1g"}}),
    # --label / -l
    ("--label team=ml", {"labels": {"team": "ml"}}),
    ("--label=team=ml", {"labels": {"team": "ml"}}),
    ("-l team=ml", {"labels": {"team": "ml"}}),
    ("-lflag", {"labels": {"flag": ""}}),
    # --sysctl
    ("--sysctl net.core.somaxconn=1024", {"sysctls": {"net.core.somaxconn": "1024"}}),
    ("--sysctl=kernel.shmmax=1", {"sysctls": {"kernel.shmmax": "1"}}),
    # --device-cgroup-rule
    ("--device-cgroup-rule='c 226:* rmw'", {"device_cgroup_rules": ["c 226:* rmw"]}),
    ("--device-cgroup-rule 'a *:* rwm'", {"device_cgroup_rules": ["a *:* rwm"]}),
    # accepted and ignored
    ("--rm", {}),
    ("--rm=false", {}),
    ("-it", {}),
    ("-ti", {}),
    ("-i -t -d", {}),
    ("-itd", {}),
    ("--interactive --tty --detach", {}),
    ("--interactive=true --tty=false --detach", {}),
    ("-t=false", {}),
    ("-ite A=1", {"environment": {"A": "1"}}),
    ("-iteA=1", {"environment": {"A": "1"}}),
    # nothing at all
    ("", {}),
    ("   \n\t ", {}),
]


@pytest.mark.parametrize(("text", "expected"), FLAG_CASES, ids=[c[0] or "<empty>" for c in FLAG_CASES])
def test_flag_forms(text: str, expected: dict[str, Any]) -> None:
    assert kw(text) == expected


# --------------------------------------------------------------------------- sdk types built only in sdk_kwargs


def test_ulimits_are_plain_tuples_until_sdk_kwargs() -> None:
    from docker.types import Ulimit

    o = p("--ulimit memlock=-1:-1 --ulimit=nofile=1024:4096 --ulimit stack=unlimited --ulimit core=0")
    assert o.ulimits == (("memlock", -1, -1), ("nofile", 1024, 4096), ("stack", -1, -1), ("core", 0, 0))
    assert all(type(u) is UlimitSpec for u in o.ulimits)
    built = o.sdk_kwargs()["ulimits"]
    assert all(isinstance(u, Ulimit) for u in built)
    assert [(u.name, u.soft, u.hard) for u in built] == list(o.ulimits)


@pytest.mark.parametrize(("text", "expected"), [
    ("--ulimit nofile=1024", ("nofile", 1024, 1024)),
    ("--ulimit=NOFILE=1:2", ("nofile", 1, 2)),
    ("--ulimit memlock=unlimited:unlimited", ("memlock", -1, -1)),
    ("--ulimit memlock=1:unlimited", ("memlock", 1, -1)),
    ("--ulimit memlock=-1", ("memlock", -1, -1)),
    ("--ulimit nofile=1:2 --ulimit nofile=3:4", ("nofile", 3, 4)),  # the later one wins, as in docker
])
def test_ulimit_values(text: str, expected: tuple[str, int, int]) -> None:
    assert p(text).ulimits == (expected,)


@pytest.mark.parametrize(("text", "request_"), [
    ("--gpus all", GpuRequest(count=-1)),
    ("--gpus=all", GpuRequest(count=-1)),
    ("--gpus 2", GpuRequest(count=2)),
    ("--gpus=count=2", GpuRequest(count=2)),
    ("--gpus count=all", GpuRequest(count=-1)),
    ("--gpus '\"device=0,2\"'", GpuRequest(count=0, device_ids=("0", "2"))),
    ("--gpus device=1", GpuRequest(count=0, device_ids=("1",))),
    ("--gpus=device=GPU-3a2b", GpuRequest(count=0, device_ids=("GPU-3a2b",))),
    ("--gpus 'all,capabilities=compute'", GpuRequest(count=-1, capabilities=(("compute", "gpu"),))),
    ("--gpus all,driver=nvidia", GpuRequest(count=-1, driver="nvidia")),
    ("--gpus 'driver=nvidia'", GpuRequest(count=1, driver="nvidia")),
    ("--gpus 'all,\"options=a=1,b\"'", GpuRequest(count=-1, options=(("a", "1"), ("b", "")))),
])
def test_gpus(text: str, request_: GpuRequest) -> None:
    from docker.types import DeviceRequest

    o = p(text)
    assert o.device_requests == (request_,)
    (built,) = o.sdk_kwargs()["device_requests"]
    assert isinstance(built, DeviceRequest)
    assert built.count == request_.count
    assert (built.device_ids or []) == list(request_.device_ids)
    assert built.capabilities == [list(c) for c in request_.capabilities]
    assert built.driver == request_.driver and built.options == dict(request_.options)


def test_gpus_all_is_the_sdk_shape_the_executor_uses() -> None:
    from docker.types import DeviceRequest

    assert kw("--gpus all")["device_requests"] == [DeviceRequest(count=-1, capabilities=[["gpu"]])]


def test_sdk_kwargs_types_and_only_set_keys() -> None:
    o = p("--device=/dev/kfd -e A=1 -v /d:/d --shm-size 1G --cap-add X --cap-drop Y --security-opt label=disable "
          "--ulimit core=0 --group-add video --ipc host --network host --privileged --cpus 1 -m 1g "
          "--memory-swap 2g -u root --pid host -h n --add-host a:1.2.3.4 --gpus all --tmpfs /t -l k=v "
          "--sysctl a.b=1 --device-cgroup-rule 'c 1:1 r'")
    k = o.sdk_kwargs()
    assert set(k) == {f.name for f in dataclasses.fields(RunOptions)}
    for name in ("devices", "cap_add", "cap_drop", "security_opt", "group_add", "device_cgroup_rules",
                 "ulimits", "device_requests"):
        assert type(k[name]) is list, name
    for name in ("environment", "volumes", "extra_hosts", "tmpfs", "labels", "sysctls"):
        assert type(k[name]) is dict, name
    assert type(k["nano_cpus"]) is int and k["privileged"] is True
    assert kw("") == {} and kw("--rm -it") == {}


def test_sdk_kwargs_are_accepted_by_the_sdk_container_builder() -> None:
    # The SDK's own kwargs -> API translation, no engine needed: every key and value type must be one it takes.
    from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS, _create_container_args

    k = kw("--device=/dev/kfd -e A=1 -v /d:/d:ro --shm-size 16GiB --cap-add X --security-opt seccomp=unconfined "
           "--ulimit memlock=-1:-1 --group-add video --ipc host --network host --privileged --cpus 1.5 -m 1g "
           "--memory-swap -1 -u root --pid host --add-host a:1.2.3.4 --gpus all --tmpfs /t:size=1g -l k=v "
           "--sysctl a.b=1 --device-cgroup-rule 'c 1:1 r'")
    assert set(k) - {"volumes"} <= set(RUN_CREATE_KWARGS) | set(RUN_HOST_CONFIG_KWARGS)
    api = _create_container_args({**k, "image": "img", "version": "1.44"})
    hc = api["host_config"]
    assert hc["ShmSize"] == 16 * 1024**3 and hc["Memory"] == 1024**3 and hc["MemorySwap"] == -1
    assert hc["Binds"] == ["/d:/d:ro"] and hc["NanoCpus"] == 1_500_000_000
    assert hc["Devices"] == [{"PathOnHost": "/dev/kfd", "PathInContainer": "/dev/kfd", "CgroupPermissions": "rwm"}]
    assert hc["Ulimits"] == [{"Name": "memlock", "Soft": -1, "Hard": -1}]
    assert hc["DeviceRequests"][0]["Count"] == -1 and hc["ExtraHosts"] == ["a:1.2.3.4"]
    assert api["environment"] == {"A": "1"} and api["labels"] == {"k": "v"}


# --------------------------------------------------------------------------- MAD's real shapes


@pytest.mark.parametrize(("text", "expected"), [
    ("--device=/dev/infiniband -e MODEL_REPO=https://x",
     {"devices": ["/dev/infiniband:/dev/infiniband:rwm"], "environment": {"MODEL_REPO": "https://x"}}),
    ("--device=/dev/infiniband -e MODEL_REPO=foo --shm-size 16G --cap-add=SYS_PTRACE",
     {"devices": ["/dev/infiniband:/dev/infiniband:rwm"], "environment": {"MODEL_REPO": "foo"}, "shm_size": "16G",
      "cap_add": ["SYS_PTRACE"]}),
    ("--network host -it --rm --ipc=host --device=/dev/kfd --device=/dev/dri --group-add video "
     "--cap-add=SYS_PTRACE --security-opt seccomp=unconfined --shm-size 64G -v /data:/data -e HF_TOKEN",
     {"network_mode": "host", "ipc_mode": "host", "devices": ["/dev/kfd:/dev/kfd:rwm", "/dev/dri:/dev/dri:rwm"],
      "group_add": ["video"], "cap_add": ["SYS_PTRACE"], "security_opt": ["seccomp=unconfined"], "shm_size": "64G",
      "volumes": {"/data": {"bind": "/data", "mode": "rw"}}, "environment": {"HF_TOKEN": "hf_abc"}}),
    ("  --env   'PROMPT=hello world'\n--ulimit memlock=-1 ",
     {"environment": {"PROMPT": "hello world"}, "ulimits": [{"Name": "memlock", "Soft": -1, "Hard": -1}]}),
])
def test_mad_shapes(text: str, expected: dict[str, Any]) -> None:
    assert kw(text) == expected


@pytest.mark.parametrize("text", [
    '-e X="; rm -rf /"',
    "-e 'X=; rm -rf /'",
    "--env=X=';'' rm -rf /'",
])
def test_shell_metacharacters_are_literal(text: str) -> None:
    assert p(text).environment == {"X": "; rm -rf /"}


@pytest.mark.parametrize(("text", "expected"), [
    ("-e 'X=$(reboot)'", "$(reboot)"),
    ("-e 'X=`id`'", "`id`"),
    ("-e 'X=$HOME'", "$HOME"),  # no expansion either: docker would not expand it in the container env
    ("-e 'X=a && b | c > /tmp/f'", "a && b | c > /tmp/f"),
    ("-e X=a#b", "a#b"),
])
def test_no_shell_semantics(text: str, expected: str) -> None:
    assert p(text).environment == {"X": expected}


def test_unquoted_shell_command_is_rejected_not_run() -> None:
    with pytest.raises(DockerRunOptionsError, match=r"unexpected argument ';'"):
        p("-e X=1 ; rm -rf /")
    with pytest.raises(DockerRunOptionsError, match=r"unexpected argument '&&'"):
        p("--rm && reboot")


# --------------------------------------------------------------------------- errors name the flag


@pytest.mark.parametrize(("text", "message"), [
    ("--foo", "unsupported flag '--foo'"),
    ("--foo=bar", "unsupported flag '--foo'"),
    ("-p 8080:80", "unsupported flag '-p'"),
    ("--publish 8080:80", "unsupported flag '--publish'"),
    ("--entrypoint bash", "unsupported flag '--entrypoint'"),
    ("-iz", "unsupported flag '-z'"),
    ("-privileged", "unsupported flag '-p' in '-privileged' (did you mean '--privileged'?)"),
    ("-net=host", "unsupported flag '-n' in '-net=host' (did you mean '--net'?)"),
    ("--env-file ./env", "unsupported flag '--env-file'"),
    ("--env-file=./env", "unsupported flag '--env-file'"),
    ("--mount type=bind,src=/a,dst=/b", "unsupported flag '--mount'"),
    ("--workdir /x", "unsupported flag '--workdir'"),
    ("-w /x", "unsupported flag '-w'"),
    ("--name mine", "unsupported flag '--name'"),
    ("--ulimit x", "'--ulimit' value 'x' is not name=soft[:hard]"),
    ("--ulimit=bogus=1", "'--ulimit' value 'bogus=1' is not name=soft[:hard]"),
    ("--ulimit nofile=a", "'--ulimit' value 'nofile=a' is not name=soft[:hard]"),
    ("--ulimit nofile=1:2:3", "'--ulimit' value 'nofile=1:2:3' is not name=soft[:hard]"),
    ("--ulimit nofile=-2", "'--ulimit' value 'nofile=-2' is not name=soft[:hard]"),
    ("--ulimit nofile=10:5", "'--ulimit' value 'nofile=10:5': the soft limit is above the hard limit"),
    ("--ulimit nofile=unlimited:5", "'--ulimit'"),
    ("--shm-size", "'--shm-size' needs a value"),
    ("--shm-size=", "'--shm-size' needs a value"),
    ("-e", "'-e' needs a value"),
    ("-it -v", "'-v' needs a value"),
    ("--shm-size lots", "'--shm-size' value 'lots' is not a size such as 16G"),
    ("--shm-size=-1", "'--shm-size' value '-1' is not a size"),
    ("-m 1x", "'-m' value '1x' is not a size"),
    ("--memory-swap=-2", "'--memory-swap' value '-2' is not a size such as 16G or -1"),
    ("--privileged=yes", "'--privileged' value 'yes' is not true or false"),
    ("--rm=maybe", "'--rm' value 'maybe' is not true or false"),
    ("--privileged true", "unexpected argument 'true'"),
    ("--cpus=lots", "'--cpus' value 'lots' is not a number of CPUs"),
    ("--cpus=-1", "'--cpus' value '-1' is not a number of CPUs"),
    ("--cpus=0", "'--cpus' value '0' is not a positive number of CPUs"),
    ("--cpus=nan", "'--cpus'"),
    ("--cpus=0.0000000001", "'--cpus' value '0.0000000001' is too precise"),
    ("--device=dev/kfd", "'--device' value 'dev/kfd': 'dev/kfd' is not an absolute device path"),
    ("--device=/dev/kfd:kfd", "'--device' value '/dev/kfd:kfd': 'kfd' is not an absolute device path"),
    ("--device=/dev/a:/dev/b:rx", "'--device' value '/dev/a:/dev/b:rx': permissions 'rx'"),
    ("--device=/dev/a:/dev/b:rr", "permissions 'rr'"),
    ("--device=/a:/b:r:w", "'--device' value '/a:/b:r:w' is not HOST[:CONTAINER[:PERMISSIONS]]"),
    ("--device=/a::r", "is not HOST[:CONTAINER[:PERMISSIONS]]"),
    ("--device=vendor.com/gpu=all", "'--device'"),
    ("-v /data", "'-v' value '/data' is not HOST:CONTAINER[:OPTIONS]"),
    ("--volume=/a:/b:ro:x", "'--volume' value '/a:/b:ro:x' is not HOST:CONTAINER[:OPTIONS]"),
    ("-v ./data:/data", "'./data' is neither an absolute host path nor a volume name"),
    ("-v data/x:/data", "'data/x' is neither an absolute host path nor a volume name"),
    ("-v ~/data:/data", "is neither an absolute host path nor a volume name"),
    ("-v /a:rel", "'-v' value '/a:rel': 'rel' is not an absolute path"),
    ("-v /a:/b:rx", "'-v' value '/a:/b:rx': bad option 'rx'"),
    ("-v /a:/b:ro,rw", "bad option 'rw'"),
    ("-v /a:/b -v /a:/c", "'/a' is already mounted at '/b'"),
    ("-v /a:/b -v /c:/b", "'/b' is already a mount point"),
    ("--network a --net b", "'--net' value 'b': only one network is supported"),
    ("--ipc=bogus", "'--ipc' value 'bogus' is not "),
    ("--ipc=container:", "'--ipc' value 'container:' is not "),
    ("--pid=private", "'--pid' value 'private' is not host or container:NAME"),
    ("-h 'bad name'", "'-h' value 'bad name' is not a host name"),
    ("--hostname=-x", "'--hostname' value '-x' is not a host name"),
    ("-u 'a b'", "'-u' value 'a b' is not USER[:GROUP]"),
    ("--cap-add='SYS PTRACE'", "'--cap-add' value 'SYS PTRACE' is not a capability name"),
    ("--group-add a:b", "'--group-add' value 'a:b' is not a group name or id"),
    ("--security-opt=seccomp", "'--security-opt' value 'seccomp' is not KEY=VALUE"),
    ("--security-opt seccomp=/etc/p.json", "seccomp profile files are not supported"),
    ("--add-host=db", "'--add-host' value 'db' is not HOST:IP"),
    ("--add-host=:1.2.3.4", "'--add-host' value ':1.2.3.4' is not HOST:IP"),
    ("--add-host=db:nowhere", "'--add-host' value 'db:nowhere': 'nowhere' is not an IP address"),
    ("--gpus lots", "'--gpus' value 'lots' is not all, a count or device=ID"),
    ("--gpus device=0,2", "'--gpus' value 'device=0,2' sets both a count and devices"),
    ("--gpus all,count=2", "'count' is given twice"),
    ("--gpus all,bogus=1", "unknown key 'bogus'"),
    ("--gpus '\"device=0'", "'--gpus'"),
    ("--tmpfs run", "'--tmpfs' value 'run': 'run' is not an absolute path"),
    ("--label =v", "'--label' value '=v' is not KEY[=VALUE]"),
    ("--sysctl a.b", "'--sysctl' value 'a.b' is not KEY=VALUE"),
    ("--device-cgroup-rule 'x 1:1 r'", "'--device-cgroup-rule' value 'x 1:1 r' is not a rule"),
    ("-e =oops", "'-e' value has an empty variable name"),
    ("rocm/pytorch:latest", "unexpected argument 'rocm/pytorch:latest'"),
    ("--rm -- bash", "unexpected argument '--'"),
    ("-", "unexpected argument '-'"),
    ("-e 'A=1", "cannot split it into words"),
])
def test_errors_name_the_flag(text: str, message: str) -> None:
    with pytest.raises(DockerRunOptionsError) as info:
        p(text)
    assert str(info.value).startswith("additional_docker_run_options: ")
    assert message in str(info.value)


def test_error_type_and_reasons() -> None:
    assert issubclass(DockerRunOptionsError, MadError)
    with pytest.raises(DockerRunOptionsError, match=r"unsupported flag '-w' \(pytest-madengine owns"):
        p("-w /x")
    with pytest.raises(DockerRunOptionsError, match=r"^additional_docker_run_options: unsupported flag '--foo'$"):
        p("--foo")


def test_split_error_does_not_echo_secrets() -> None:
    with pytest.raises(DockerRunOptionsError) as info:
        p("-e HF_TOKEN='hf_secret")
    assert "hf_secret" not in str(info.value)
    with pytest.raises(DockerRunOptionsError) as info:
        p("-e =hf_secret")
    assert "hf_secret" not in str(info.value)


def test_non_string_is_rejected() -> None:
    with pytest.raises(DockerRunOptionsError, match="must be a string, not list"):
        parse(["--rm"], {})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- host env, purity


def test_bare_env_reads_the_given_mapping_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONLY_IN_OS_ENVIRON", "x")
    assert parse("-e ONLY_IN_OS_ENVIRON -e K", {"K": "v"}).environment == {"K": "v"}
    assert parse("-e K", {}).environment == {}


def test_pflag_takes_the_next_word_whatever_it_looks_like() -> None:
    # docker does the same: `-e --rm` sets a variable named "--rm" (here: absent from the host, so dropped).
    assert p("-e --rm=1").environment == {"--rm": "1"}
    assert p("--label --x").labels == {"--x": ""}


def test_result_is_frozen_and_read_only() -> None:
    o = p("-e A=1 -v /a:/b --add-host h:1.1.1.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.shm_size = "1G"  # type: ignore[misc]
    with pytest.raises(TypeError):
        o.environment["B"] = "2"  # type: ignore[index]
    k = o.sdk_kwargs()
    k["environment"]["B"] = "2"
    k["volumes"]["/a"]["mode"] = "ro"
    assert o.environment == {"A": "1"} and o.volumes == {"/a": VolumeBind("/b", "rw")}
    assert p("-e A=1 -v /a:/b --add-host h:1.1.1.1") == o


def test_defaults() -> None:
    o = p("")
    assert o == RunOptions()
    assert o.privileged is None and o.devices == () and o.environment == {} and o.device_requests == ()


def test_every_value_flag_has_a_handler() -> None:
    assert set(dro._HANDLERS) == dro._VALUE_FLAGS
    assert set(dro._SHORT.values()) <= dro._VALUE_FLAGS | dro._BOOL_FLAGS | set(dro._UNSUPPORTED)


# --------------------------------------------------------------------------- merge_into


@pytest.mark.parametrize(("base", "extra", "expected"), [
    ({}, {"cap_add": ["A"]}, {"cap_add": ["A"]}),
    ({"cap_add": ["A"]}, {}, {"cap_add": ["A"]}),
    ({"cap_add": ["A", "B"]}, {"cap_add": ["B", "C"]}, {"cap_add": ["A", "B", "C"]}),
    ({"cap_add": ["A", "A"]}, {"cap_add": ["C", "C"]}, {"cap_add": ["A", "C"]}),
    ({"devices": ("/a",)}, {"devices": ["/b"]}, {"devices": ["/a", "/b"]}),
    ({"environment": {"A": "1", "B": "1"}}, {"environment": {"B": "2", "C": "3"}},
     {"environment": {"A": "1", "B": "2", "C": "3"}}),
    ({"volumes": {"/a": {"bind": "/a", "mode": "rw"}}}, {"volumes": {"/a": {"bind": "/a", "mode": "ro"}}},
     {"volumes": {"/a": {"bind": "/a", "mode": "ro"}}}),
    ({"network_mode": "host"}, {"network_mode": "bridge"}, {"network_mode": "bridge"}),
    ({"privileged": True}, {"privileged": False}, {"privileged": False}),
    ({"shm_size": "8G", "image": "x"}, {"shm_size": "16G"}, {"shm_size": "16G", "image": "x"}),
    ({"user": None}, {"user": "root"}, {"user": "root"}),
    ({"devices": None}, {"devices": ("/a",)}, {"devices": ["/a"]}),
    ({"user": "root"}, {"user": None}, {"user": None}),
])
def test_merge_into(base: dict[str, Any], extra: dict[str, Any], expected: dict[str, Any]) -> None:
    before = repr(base)
    assert merge_into(base, extra) == expected
    assert repr(base) == before  # base is not modified


def test_merge_into_dedups_sdk_objects_by_equality() -> None:
    from docker.types import DeviceRequest, Ulimit

    base = {"device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])],
            "ulimits": [Ulimit(name="memlock", soft=-1, hard=-1)]}
    merged = merge_into(base, kw("--gpus all --ulimit memlock=-1 --ulimit nofile=1"))
    assert merged["device_requests"] == [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    assert [u.name for u in merged["ulimits"]] == ["memlock", "nofile"]


def test_merge_into_does_not_share_containers_with_its_inputs() -> None:
    extra = {"cap_add": ["A"], "environment": {"A": "1"}}
    merged = merge_into({}, extra)
    merged["cap_add"].append("B")
    merged["environment"]["B"] = "2"
    assert extra == {"cap_add": ["A"], "environment": {"A": "1"}}


def test_merge_into_refuses_a_shape_mismatch() -> None:
    with pytest.raises(TypeError, match="cannot merge 'volumes'"):
        merge_into({"volumes": ["/a:/a"]}, {"volumes": {"/b": {"bind": "/b", "mode": "rw"}}})
    with pytest.raises(TypeError, match="cannot merge 'environment'"):
        merge_into({"environment": {"A": "1"}}, {"environment": "A=1"})


def test_merge_into_the_executor_defaults() -> None:
    # The shape the docker executor builds: its defaults plus the model's extra flags.
    base = {"image": "img", "network_mode": "host", "ipc_mode": "host", "cap_add": ["SYS_PTRACE"],
            "security_opt": ["seccomp=unconfined"], "environment": {"MAD_MODEL": "m"}, "devices": ["/dev/kfd"]}
    merged = merge_into(base, kw("--cap-add=SYS_PTRACE --cap-add SYS_ADMIN --network=bridge -e MAD_MODEL=x "
                                 "--device=/dev/infiniband"))
    assert merged["cap_add"] == ["SYS_PTRACE", "SYS_ADMIN"]
    assert merged["network_mode"] == "bridge" and merged["environment"] == {"MAD_MODEL": "x"}
    assert merged["devices"] == ["/dev/kfd", "/dev/infiniband:/dev/infiniband:rwm"]
    assert merged["image"] == "img" and merged["ipc_mode"] == "host"


# --------------------------------------------------------------------------- describe


def test_describe_hides_secret_looking_env_values() -> None:
    o = parse("-e HF_TOKEN -e db_password=p -e MY_SECRET=s -e api_key=k -e MONKEY=m -e MODEL_REPO=https://x",
              HOST_ENV)
    (line,) = [line for line in describe(o) if line.startswith("env:")]
    assert line == "env: HF_TOKEN=***, db_password=***, MY_SECRET=***, api_key=***, MONKEY=***, MODEL_REPO=https://x"
    assert "hf_abc" not in "\n".join(describe(o))


def test_describe_lines() -> None:
    o = p("--privileged --device=/dev/kfd --gpus all -e A=1 -v /d:/mnt:ro --shm-size 16G --cpus 2.5 "
          "--cap-add SYS_PTRACE --ulimit memlock=-1 --ulimit nofile=1:2 --network host --add-host db:1.2.3.4 "
          "--label team=ml --sysctl a.b=1 --tmpfs /run:size=1g -m 8g --cpus 10")
    lines = describe(o)
    assert "privileged: yes" in lines
    assert "devices: /dev/kfd:/dev/kfd:rwm" in lines
    assert "gpus: all" in lines
    assert "env: A=1" in lines
    assert "volumes: /d -> /mnt (ro)" in lines
    assert "shm size: 16G" in lines and "memory: 8g" in lines
    assert "cpus: 10" in lines
    assert "cap add: SYS_PTRACE" in lines
    assert "ulimits: memlock=unlimited:unlimited, nofile=1:2" in lines
    assert "network: host" in lines and "add hosts: db:1.2.3.4" in lines
    assert "labels: team=ml" in lines and "sysctls: a.b=1" in lines and "tmpfs: /run:size=1g" in lines
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    assert describe(p("--cpus 2.5")) == ["cpus: 2.5"]
    assert describe(p('--gpus \'"device=0,1"\'')) == ["gpus: device=0,1"]
    assert describe(p("--privileged=false")) == ["privileged: no"]


def test_describe_nothing() -> None:
    assert describe(p("--rm -it")) == []
