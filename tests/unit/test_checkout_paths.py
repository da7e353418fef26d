"""Paths from models files: script kinds, the checkout boundary, the run folder copy, log names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_madengine.errors import ExecutorError
from pytest_madengine.models import BrokenEntry, Model, load_path, parse_tags, path_bounds, spec_name
from pytest_madengine.session import script_argv
from pytest_madengine.workspace import livelogs
from pytest_madengine.workspace.runfolder import copy_script_folder


def write_models(path: Path, entries: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def touch(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("scripts", "argv"), [
    ("scripts/m/run.sh", ("bash", "run.sh")),
    ("scripts/m/job.slurm", ("bash", "job.slurm")),
    ("scripts/m/job.SBATCH", ("bash", "job.SBATCH")),
    ("scripts/m/bench.py", ("python3", "bench.py")),
    ("scripts/m", ("bash", "run.sh")),
])
def test_scripts_run_as_madengine_runs_them(scripts: str, argv: tuple[str, ...]) -> None:
    folder, got = script_argv(scripts, ["--x", "1"])
    assert got == (*argv, "--x", "1")
    assert folder == (Path(scripts) if argv[1] == "run.sh" and not scripts.endswith(".sh") else Path(scripts).parent)


def test_entries_leading_outside_the_checkout_are_broken(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    touch(root / "scripts/m/run.sh")
    touch(root / "scripts/m/notes.txt")
    touch(tmp_path / "outside/run.sh")
    (root / "scripts/m/out").symlink_to(tmp_path / "outside")
    path = write_models(root / "scripts/m/models.json", [
        {"name": "ok", "dockerfile": "../../docker/x", "scripts": "run.sh"},
        {"name": "dotdot", "dockerfile": "../../docker/x", "scripts": "../../../outside/run.sh"},
        {"name": "abs", "dockerfile": "../../docker/x", "scripts": "/etc/passwd"},
        {"name": "link", "dockerfile": "../../docker/x", "scripts": "out/run.sh"},
        {"name": "root", "dockerfile": "../../docker/x", "scripts": "/"},
        {"name": "docker", "dockerfile": "../../../docker/x", "scripts": "run.sh"},
        {"name": "ctx", "dockerfile": "../../docker/x", "scripts": "run.sh", "dockercontext": "../elsewhere"},
        {"name": "kind", "dockerfile": "../../docker/x", "scripts": "notes.txt"},
        {"name": "missing_folder", "dockerfile": "../../docker/x", "scripts": "nothere"},
        {"name": "cloned", "dockerfile": "../../docker/x", "scripts": "nothere", "url": "https://h/x.git"},
    ])
    loaded = load_path(path, root)
    assert [m.name for m in loaded.models] == ["m/ok", "m/cloned"]
    why = {b.name: b.message for b in loaded.broken}
    for name in ("dotdot", "abs", "link", "root"):
        assert "field 'scripts'" in why[f"m/{name}"] and "leads outside" in why[f"m/{name}"], name
    assert "field 'dockerfile' '../../../docker/x' leads outside" in why["m/docker"]
    assert "field 'dockercontext' '../elsewhere' leads outside" in why["m/ctx"]
    assert "field 'scripts' 'notes.txt' is a file" in why["m/kind"]
    assert "is neither a file nor a folder that exists" in why["m/missing_folder"]
    assert all(str(path.name) in m or "models.json" in m for m in why.values())


def test_a_models_file_outside_the_checkout_is_bounded_by_its_folder(tmp_path: Path) -> None:
    root, extra = tmp_path / "zoo", tmp_path / "extra"
    root.mkdir()
    touch(extra / "scripts/run.sh")
    path = write_models(extra / "models.json", [
        {"name": "ok", "dockerfile": "docker/x", "scripts": "scripts/run.sh"},
        {"name": "up", "dockerfile": "docker/x", "scripts": "../zoo/run.sh"},
    ])
    assert path_bounds(path, root) == (extra.resolve(),)
    loaded = load_path(path, root)
    assert [m.name for m in loaded.models] == ["ok"] and loaded.broken[0].name == "up"


def test_a_bad_docker_run_option_breaks_its_entry_at_collection(tmp_path: Path) -> None:
    touch(tmp_path / "run.sh")
    path = write_models(tmp_path / "models.json", [
        {"name": "a", "dockerfile": "d", "scripts": "run.sh", "additional_docker_run_options": "--device=/dev/x -e A=1"},
        {"name": "b", "dockerfile": "d", "scripts": "run.sh", "additional_docker_run_options": "--no-such-flag"},
        {"name": "c", "dockerfile": "d", "scripts": "run.sh", "additional_docker_run_options": 3},
    ])
    loaded = load_path(path, tmp_path)
    assert [m.name for m in loaded.models] == ["a"]
    messages = [b.message for b in loaded.broken]
    assert "unsupported flag '--no-such-flag'" in messages[0] and "entry 1 ('b')" in messages[0]
    assert "field 'additional_docker_run_options' must be a string" in messages[1]


def test_the_run_folder_follows_links_inside_and_leaves_out_links_outside(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    src = root / "scripts/m"
    touch(src / "run.sh")
    touch(src / "sub/data.txt", "data\n")
    touch(root / "scripts/common/lib.sh", "lib\n")
    touch(tmp_path / "host/secret", "secret\n")
    (src / "lib.sh").symlink_to("../common/lib.sh")
    (src / "common").symlink_to(root / "scripts/common")
    (src / "secret").symlink_to(tmp_path / "host/secret")
    (src / "hostdir").symlink_to(tmp_path / "host")
    (src / "dangling").symlink_to(root / "nothere")
    (src / "loop").symlink_to(src)
    (src / ".git").mkdir()
    notes: list[str] = []
    dest = tmp_path / "work/m"
    touch(dest / "stale.csv")
    copy_script_folder(src, dest, bounds=(root.resolve(),), skip=(), note=notes.append)
    assert (dest / "lib.sh").read_text() == "lib\n" and not (dest / "lib.sh").is_symlink()
    assert (dest / "common/lib.sh").read_text() == "lib\n" and (dest / "sub/data.txt").exists()
    for gone in ("secret", "hostdir", "dangling", "loop", ".git", "stale.csv"):
        assert not os.path.lexists(dest / gone), gone
    assert any(n.startswith("left out secret: a symlink to") and "outside the checkout" in n for n in notes)
    assert any("left out loop: a symlink loop" == n for n in notes)
    with pytest.raises(ExecutorError, match="leads outside"):
        copy_script_folder(tmp_path / "host", dest, bounds=(root.resolve(),), skip=(), note=notes.append)


def test_live_log_names_and_links(tmp_path: Path) -> None:
    assert livelogs.live_log_name("org/m", "x.ubuntu.amd", "run") == "org_m_x.ubuntu.amd.run.live.log"
    assert livelogs.live_log_name("m", "x", "") == "m_x.live.log"
    target = touch(tmp_path / "mad_logs/m.log", "log\n")
    touch(tmp_path / "m_x.run.live.log", "madengine's old log\n")
    link = livelogs.link(tmp_path, "m_x.run.live.log", target)
    assert link is not None and link.is_symlink() and link.read_text() == "log\n"
    assert os.readlink(link) == "mad_logs/m.log"  # relative: survives a moved checkout
    (tmp_path / "adir.run.live.log").mkdir()
    assert livelogs.link(tmp_path, "adir.run.live.log", target) is None


def test_a_tag_names_an_item_of_several(tmp_path: Path) -> None:
    [spec] = parse_tags(["vllm/m[ctx2a.ubuntu.amd]:batch=8"])
    assert spec_name(spec) == "vllm/m[ctx2a.ubuntu.amd]" and spec.extra_args == ("--batch", "8")


def test_generated_models_see_their_scoped_name_in_update_model(tmp_path: Path) -> None:
    folder = tmp_path / "scripts/gen"
    touch(folder / "run.sh")
    touch(folder / "get_models_json.py", (
        "from madengine.utils.discover_models import CustomModel\n"
        "class M(CustomModel):\n"
        "    def update_model(self):\n"
        "        self.args = '--seen ' + self.name\n"
        "        self.name = 'renamed'  # madengine ignores a name changed here\n"
        "def list_models():\n"
        "    return [M(name='a', dockerfile='d', scripts='run.sh'), CustomModel(name='b', scripts='run.sh',\n"
        "            dockerfile='d')]\n"))
    loaded = load_path(folder / "get_models_json.py", tmp_path)
    by_name = {m.name: m for m in loaded.models}
    assert set(by_name) == {"gen/a", "gen/b"}, [b.message for b in loaded.broken if isinstance(b, BrokenEntry)]
    assert by_name["gen/a"].args == "--seen gen/a"
    assert by_name["gen/b"].timeout == 7200 and by_name["gen/b"].n_gpus == -1  # CustomModel's defaults
    assert isinstance(by_name["gen/b"], Model)


def test_a_baseline_compares_each_dockerfile_item_with_its_own_row(tmp_path: Path) -> None:
    from pytest_madengine.results import baseline
    from pytest_madengine.results.result import SUCCESS, ModelResult, Row

    csv_path = tmp_path / "perf.csv"
    csv_path.write_text("model,performance,metric,status,docker_file\n"
                        "m,100,x_per_s,SUCCESS,docker/m.a.Dockerfile\n"
                        "m,10,x_per_s,SUCCESS,docker/m.b.Dockerfile\n")
    base = baseline.load(csv_path)
    for dockerfile, regressed in (("docker/m.a.Dockerfile", True), ("docker/m.b.Dockerfile", False)):
        result = ModelResult("m", SUCCESS, rows=[Row("m", 50.0, "x_per_s", SUCCESS)], dockerfile=dockerfile)
        [cmp] = baseline.compare(result, base, 5.0)
        assert cmp.regressed is regressed, dockerfile
