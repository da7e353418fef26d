"""Data providers, pure parts: data.json and context parsing, credentials, each provider's
plan (secrets never in argv or repr), the resolver's order and fallback with fake probes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_madengine.data import config, credentials, resolve
from pytest_madengine.data.config import DataError
from pytest_madengine.data.plan import Unusable

NOTE: list[str] = []


def cfg(tmp_path: Path, data: object, ctx: object = None, mirror: Path | None = None) -> config.DataConfig:
    (tmp_path / "data.json").write_text(json.dumps(data))
    return config.load(tmp_path / "data.json", False, ctx, mirror)


def test_providers_come_in_madengines_order_and_the_context_replaces_entries(tmp_path: Path) -> None:
    c = cfg(tmp_path, {"d": {"aws": {"path": "s3://b/x"}, "local": {"path": "/l"}, "custom": {"path": "s.sh"}},
                       "e": {"local": {"path": "/e"}}},
            ctx={"e": {"nas": {"path": "/n"}}})
    assert [s.provider for s in c.sources("d")] == ["custom", "local", "aws"]
    assert [s.provider for s in c.sources("e")] == ["nas"]


def test_force_mirror_sets_mirrorlocal_on_every_provider_but_local(tmp_path: Path) -> None:
    c = cfg(tmp_path, {"d": {"local": {"path": "/l"}, "nas": {"path": "/n", "mirrorlocal": "/old"}}},
            mirror=Path("/m"))
    local, nas = c.sources("d")
    assert (local.mirrorlocal, nas.mirrorlocal) == ("", "/m")


@pytest.mark.parametrize(("entry", "message"), [
    ({"ftp": {"path": "x"}}, "entry 'd': unknown provider 'ftp'"),
    ({"local": {"path": "/x", "mirrorlocal": "/m"}}, "provider 'local': field 'mirrorlocal' is not allowed"),
    ({"local": {}}, "provider 'local': field 'path' is missing"),
    ({"minio": {"path": "/not-s3"}}, "provider 'minio': field 'path' must be an s3:// URL"),
    ({"local": {"path": "/x", "readwrite": "maybe"}}, "field 'readwrite' must be true or false"),
    ({"custom": {"path": "s.sh", "args": "'open"}}, "field 'args' cannot be split"),
    ({"local": {"path": "/x", "home": "rel"}}, "field 'home' must be an absolute container path"),
    ({"nas": {"path": "/x", "port": 22}}, "provider 'nas': unknown field 'port'"),
    ([], "entry 'd' must be an object of providers"),
])
def test_a_malformed_entry_names_file_entry_and_field(tmp_path: Path, entry: object, message: str) -> None:
    c = cfg(tmp_path, {"d": entry, "ok": {"local": {"path": "/x"}}})
    with pytest.raises(DataError, match=message.replace("(", r"\(")) as err:
        c.sources("d")
    assert str(tmp_path / "data.json") in str(err.value)
    c.sources("ok")  # other entries stay usable


def test_an_unknown_dataname_lists_those_defined(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataname 'x' is not defined .*datanames defined: a, b"):
        cfg(tmp_path, {"a": {"local": {"path": "/"}}, "b": {"local": {"path": "/"}}}).sources("x")


def test_file_errors(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        config.load(tmp_path / "data.json", False, None, None)
    assert config.load(tmp_path / "none.json", False, None, None).entries == {}
    with pytest.raises(DataError, match="no such file"):
        config.load(tmp_path / "none.json", True, None, None)
    with pytest.raises(DataError, match="context key 'data' must be an object"):
        config.load(tmp_path / "none.json", False, ["x"], None)


def test_model_data_field_is_a_comma_list() -> None:
    assert config.datanames(" a, b ", "w") == ("a", "b")
    assert config.datanames("", "w") == ()
    with pytest.raises(DataError, match="empty dataname"):
        config.datanames("a,,b", "models.json entry 'm'")


def test_credentials_from_environment_over_file_and_secrets_hidden(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text(json.dumps({
        "NAS_NODES": [{"NAME": "n", "HOST": "h", "PORT": "2222", "USERNAME": "u", "PASSWORD": "file-secret-pw"}],
        "MAD_MINIO": {"USERNAME": "k", "PASSWORD": "file-minio-pw"}}))
    env = {"MAD_AWS_S3": json.dumps({"USERNAME": "ak", "PASSWORD": "env-aws-secret", "REGION": "eu-west-1"})}
    c = credentials.load(tmp_path, env)
    assert c.nas[0].port == 2222 and c.nas[0].password == "file-secret-pw"
    assert c.minio.endpoint == credentials.MINIO_DEFAULT_ENDPOINT and c.aws.region == "eu-west-1"
    shown = repr(c)
    assert "file-secret-pw" not in shown and "env-aws-secret" not in shown and "file-minio-pw" not in shown
    assert set(c.secrets()) >= {"file-secret-pw", "env-aws-secret", "file-minio-pw"}
    with pytest.raises(DataError, match="environment variable NAS_NODES: not valid JSON") as err:
        credentials.load(tmp_path, {"NAS_NODES": '[{"PASSWORD": "leak-me"'})
    assert "leak-me" not in str(err.value)
    with pytest.raises(DataError, match="item 0: field 'PORT' must be a port number"):
        credentials.load(tmp_path, {"NAS_NODES": json.dumps([{"HOST": "h", "USERNAME": "u", "PORT": "x"}])})


def creds(**kw: object) -> credentials.Credentials:
    nas = (credentials.NasNode("n1", "10.0.0.1", 22, "u", "pw-down"),
           credentials.NasNode("n2", "10.0.0.2", 2222, "u", "pw-secret-2"))
    return credentials.Credentials(nas=nas, minio=credentials.S3Login("http://minio:9000", "us-east-2", "ak", "sk-secret"),
                                   aws=credentials.S3Login("", "us-east-2", "ak2", "sk2-secret"))


def probes(up: set[str]) -> resolve.Probes:
    return resolve.Probes(tcp=lambda h, p: None if h in up else "does not answer (refused)",
                          http=lambda url: None if url in up else "does not answer (refused)",
                          which=lambda tool: f"/usr/bin/{tool}")


def test_nas_plans_rsync_into_the_mirror_with_the_password_only_in_the_environment(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    c = cfg(tmp_path, {"d": {"nas": {"path": "/export/d", "mirrorlocal": str(tmp_path / "m")}}})
    (src,) = c.sources("d")
    fetch = resolve.plan_source(src, 0, creds(), tmp_path, tmp_path / "scratch", probes({"10.0.0.2"}),
                                tmp_path / "kh")
    (step,) = fetch.steps
    assert step.argv[:4] == ("sshpass", "-e", "rsync", "-a") and step.argv[-2:] == (
        "u@10.0.0.2:/export/d/", f"{tmp_path}/m/d/")
    assert "-p 2222" in step.argv[5] and fetch.secret_env == {"SSHPASS": "pw-secret-2"}
    assert "pw-secret-2" not in fetch.render() + repr(fetch) + " ".join(step.argv)
    assert (fetch.home, fetch.readonly, fetch.transient) == ("/data_dlm_0", False, False)


def test_nas_without_a_mirror_mounts_with_sshfs_password_on_stdin(tmp_path: Path) -> None:
    (src,) = cfg(tmp_path, {"d": {"nas": {"path": "/export/d", "home": "/data"}}}).sources("d")
    fetch = resolve.plan_source(src, 3, creds(), tmp_path, tmp_path / "scratch", probes({"10.0.0.1"}), tmp_path / "kh")
    assert fetch.steps[0].argv[:3] == ("sshfs", "u@10.0.0.1:/export/d", str(tmp_path / "scratch/d"))
    assert "password_stdin" in fetch.steps[0].argv[-1] and fetch.stdin == "pw-down\n"
    assert fetch.mounted and fetch.transient and fetch.home == "/data"


def test_s3_plans_a_sync_and_a_single_object_fallback(tmp_path: Path) -> None:
    (src,) = cfg(tmp_path, {"d": {"minio": {"path": "s3://bucket/dir/obj.bin"}}}).sources("d")
    fetch = resolve.plan_source(src, 1, creds(), tmp_path, tmp_path / "s", probes({"http://minio:9000"}), tmp_path)
    first, single = fetch.steps
    assert first.argv == ("aws", "--endpoint-url", "http://minio:9000", "--region", "us-east-2", "s3", "sync",
                          "--only-show-errors", "s3://bucket/dir/obj.bin/", str(tmp_path / "s/d"))
    assert single.only_if_empty and single.argv[-6:] == (
        "s3://bucket/dir/", str(tmp_path / "s/d"), "--exclude", "*", "--include", "obj.bin")
    assert fetch.secret_env == {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk-secret"}
    assert "sk-secret" not in fetch.render() and fetch.home == "/data_dlm_1"
    (aws,) = cfg(tmp_path, {"e": {"aws": {"path": "s3://b/p/"}}}).sources("e")
    with pytest.raises(Unusable, match="endpoint https://s3.us-east-2.amazonaws.com does not answer"):
        resolve.plan_source(aws, 0, creds(), tmp_path, tmp_path / "s", probes(set()), tmp_path)


def test_serve_tries_in_order_and_names_every_provider_when_none_serves(tmp_path: Path) -> None:
    c = cfg(tmp_path, {"d": {"aws": {"path": "s3://b/x"}, "nas": {"path": "/x"},
                             "local": {"path": "nothere"}, "custom": {"path": "../outside.sh"}}})
    notes: list[str] = []
    with pytest.raises(DataError) as err:
        resolve.serve(["d"], c, creds(), root=tmp_path, scratch=tmp_path / "s", known_hosts=tmp_path / "kh",
                      note=notes.append, probes=probes(set()))
    text = str(err.value)
    assert text.startswith("dataname 'd': no provider can serve it (tried in madengine's order: custom: script")
    assert text.index("custom:") < text.index("local:") < text.index("nas:") < text.index("aws:")
    assert "outside the checkout" in text and "nothere does not exist" in text
    assert "n1 10.0.0.1:22 does not answer" in text and "pw-down" not in text


def test_serve_local_and_custom_and_the_run_folder_copy_is_released(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "make.sh").write_text('echo "$MAD_DATANAME" > made.txt; echo made in "$PWD"\n')
    c = cfg(tmp_path, {"a": {"local": {"path": "data", "readwrite": "true", "home": "/in"}},
                       "b": {"custom": {"path": "make.sh"}, "local": {"path": "data"}}})
    notes: list[str] = []
    got = resolve.serve(["a", "b"], c, creds(), root=tmp_path, scratch=tmp_path / "s", known_hosts=tmp_path / "kh",
                        note=notes.append, probes=probes(set()))
    assert got.mounts() == ((str(tmp_path / "data"), "/in", False), (str(tmp_path / "s/b"), "/data_dlm_1", False))
    assert got.env(True) == {"MAD_DATAHOME": "/in,/data_dlm_1"}
    assert got.env(False) == {"MAD_DATAHOME": f"{tmp_path / 'data'},{tmp_path / 's/b'}"}
    assert (tmp_path / "s/b/made.txt").read_text() == "b\n"
    perf = got.perf()
    assert perf["data_provider_type"] == "local,custom" and perf["data_size"] and perf["data_download_duration"]
    resolve.release_all(got, notes.append)
    assert not (tmp_path / "s/b").exists() and (tmp_path / "data").is_dir()  # the user's folder stays


def test_a_failing_command_moves_on_to_the_next_provider(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "bad.sh").write_text("echo 'token sk-secret leaked'; exit 4\n")
    c = cfg(tmp_path, {"d": {"custom": {"path": "bad.sh"}, "local": {"path": "data"}}})
    notes: list[str] = []
    got = resolve.serve(["d"], c, creds(), root=tmp_path, scratch=tmp_path / "s", known_hosts=tmp_path / "kh",
                        note=notes.append, probes=probes(set()))
    assert [s.fetch.source.provider for s in got.served] == ["local"]
    assert any("custom cannot serve it: bash exited 4: token *** leaked" in n for n in notes), notes
    assert not any("sk-secret" in n for n in notes)
    assert not (tmp_path / "s/d").exists()


def test_dry_run_lines_name_the_providers_without_probing(tmp_path: Path) -> None:
    c = cfg(tmp_path, {"d": {"aws": {"path": "s3://b/x"}, "local": {"path": "/l"}}})
    assert resolve.describe(["d"], c) == [
        "data 'd': the first of local (/l), aws (s3://b/x) that serves it (not fetched in a dry run)"]


def test_ctrl_c_stops_a_download_and_no_other_provider_is_tried(tmp_path: Path) -> None:
    import time
    (tmp_path / "data").mkdir()
    (tmp_path / "slow.sh").write_text("sleep 30\n")
    c = cfg(tmp_path, {"d": {"custom": {"path": "slow.sh"}, "local": {"path": "data"}}})
    start = time.monotonic()
    with pytest.raises(resolve.Interrupted, match="interrupted while bash ran"):
        resolve.serve(["d"], c, creds(), root=tmp_path, scratch=tmp_path / "s", known_hosts=tmp_path / "kh",
                      note=lambda _: None, probes=probes(set()), cancel=lambda: time.monotonic() - start > 0.5)
    assert time.monotonic() - start < 10 and not (tmp_path / "s/d").exists()


def test_slurm_container_runs_mount_the_served_data_at_its_host_path() -> None:
    from pytest_madengine.executors.slurm.batch import BatchPlan, task_script
    text = task_script(BatchPlan(job_name="mad-x-m", job_dir=Path("/s/logs"), node_dir=Path("/s/work"),
                                 argv=("bash", "run.sh"), env={"MAD_DATAHOME": "/nfs/mirror/d,/data/l"},
                                 docker_image="img", workspace=Path("/s"),
                                 data_mounts=(("/nfs/mirror/d", False), ("/data/l", True))))
    assert "-v /nfs/mirror/d:/nfs/mirror/d -v /data/l:/data/l:ro" in text
