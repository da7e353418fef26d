"""Unit tests for pytest_madengine.models: loading, validation, discovery, selection."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.errors import ModelsFileError, SelectionError
from pytest_madengine.models import (
    BrokenEntry,
    LoadResult,
    Model,
    TagSpec,
    discover,
    key_of,
    load_generator_file,
    load_models_file,
    load_path,
    parse_tags,
    select,
)


def entry(name: Any = "dummy", /, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "dockerfile": "docker/dummy",
        "scripts": "scripts/dummy/run.sh",
        "n_gpus": "1",
        "tags": ["dummies"],
        "args": "",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def load_entries(tmp_path: Path, *entries: Any, **kw: Any) -> LoadResult:
    return load_models_file(write_json(tmp_path / "models.json", list(entries)), **kw)


def only_broken(result: LoadResult) -> BrokenEntry:
    assert result.models == []
    assert len(result.broken) == 1
    return result.broken[0]


# ------------------------------------------------------------------ loading JSON


def test_full_entry_becomes_model(tmp_path: Path) -> None:
    raw = entry(
        "bert",
        url="https://github.com/x/y",
        n_gpus="8",
        owner="me@example.com",
        training_precision="fp16",
        tags=["pyt", "bert"],
        args="--batch-size 4",
        timeout=360,
        multiple_results="perf_bert.csv",
        data="bert_data",
        skip_gpu_arch="gfx908, gfx90a",
        env_vars={"A": "1", "B": 2, "C": 1.5, "D": True},
        distributed={"launcher": "torchrun"},
        slurm={"nodes": 2},
        cred="github",
    )
    result = load_entries(tmp_path, raw)
    assert result.broken == []
    (m,) = result.models
    assert m == Model(
        name="bert",
        source=tmp_path / "models.json",
        index=0,
        base_dir=tmp_path,
        scope=None,
        dockerfile="docker/dummy",
        scripts="scripts/dummy/run.sh",
        n_gpus=8,
        tags=("pyt", "bert"),
        args="--batch-size 4",
        timeout=360,
        multiple_results="perf_bert.csv",
        skip_gpu_arch=("gfx908", "gfx90a"),
        env_vars={"A": "1", "B": "2", "C": "1.5", "D": "True"},
        owner="me@example.com",
        training_precision="fp16",
        url="https://github.com/x/y",
        data="bert_data",
        raw=raw,
    )
    assert m.raw["distributed"] == {"launcher": "torchrun"}
    assert m.raw["cred"] == "github"
    assert m.script_path == tmp_path / "scripts/dummy/run.sh"
    assert m.dockerfile_prefix == tmp_path / "docker/dummy"
    assert hash(m) == hash(m)  # usable in sets and as dict keys


def test_minimal_entry_gets_defaults(tmp_path: Path) -> None:
    raw = {"name": "x", "dockerfile": "d", "scripts": "s.sh"}
    (m,) = load_entries(tmp_path, raw).models
    expected = Model("x", tmp_path / "models.json", 0, tmp_path, None, "d", "s.sh", -1, (), raw=raw)
    assert m == expected and repr(m) == repr(expected) and hash(m) == hash(expected)
    assert m.env_vars is not load_entries(tmp_path, raw).models[0].env_vars  # not one shared dict
    assert (m.n_gpus, m.tags, m.args, m.timeout, m.skip_gpu_arch, dict(m.env_vars)) == (-1, (), "", -1, (), {})
    assert (m.owner, m.training_precision, m.url, m.data, m.multiple_results) == ("", "", "", "", "")


def test_null_optional_fields_count_as_absent(tmp_path: Path) -> None:
    (m,) = load_entries(tmp_path, entry(url=None, tags=None, timeout=None, env_vars=None, n_gpus=None)).models
    assert (m.url, m.tags, m.timeout, dict(m.env_vars), m.n_gpus) == ("", (), -1, {}, -1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("-1", -1), (-1, -1), ("1", 1), (1, 1), ("0", 0), (0, 0), (" 8 ", 8), (8, 8)],
)
def test_n_gpus_accepted(tmp_path: Path, value: Any, expected: int) -> None:
    (m,) = load_entries(tmp_path, entry(n_gpus=value)).models
    assert m.n_gpus == expected


@pytest.mark.parametrize("value", ["two", "", "1.5", 1.5, True, [1], {"n": 1}, "-2", -5])
def test_n_gpus_rejected(tmp_path: Path, value: Any) -> None:
    broken = only_broken(load_entries(tmp_path, entry("bert", n_gpus=value)))
    assert "models.json entry 0 ('bert')" in broken.message
    assert "field 'n_gpus'" in broken.message
    assert repr(value) in broken.message


def test_n_gpus_message_exact(tmp_path: Path) -> None:
    result = load_entries(tmp_path, entry("a"), entry("b"), entry("c"), entry("bert", n_gpus="two"))
    broken = result.broken[0]
    assert broken.message.endswith(
        "entry 3 ('bert'): field 'n_gpus' must be an integer or a string holding one, got 'two'"
    )
    assert broken.message.startswith(str(tmp_path / "models.json")) or broken.message.startswith("models.json")
    assert (broken.index, broken.name, broken.tags, broken.scope) == (3, "bert", ("dummies",), None)
    assert [m.name for m in result.models] == ["a", "b", "c"]


@pytest.mark.parametrize(("value", "expected"), [(-1, -1), (0, 0), (360, 360), ("7200", 7200), ("-1", -1)])
def test_timeout_accepted(tmp_path: Path, value: Any, expected: int) -> None:
    (m,) = load_entries(tmp_path, entry(timeout=value)).models
    assert m.timeout == expected


@pytest.mark.parametrize("value", [-2, "soon", 1.5, False, [360]])
def test_timeout_rejected(tmp_path: Path, value: Any) -> None:
    broken = only_broken(load_entries(tmp_path, entry(timeout=value)))
    assert "field 'timeout'" in broken.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["a", "b"], ("a", "b")),
        ("a, b ,,c", ("a", "b", "c")),
        ([" a ", ""], ("a",)),
        ([], ()),
        ("", ()),
    ],
)
def test_tags_list_or_comma_string(tmp_path: Path, value: Any, expected: tuple[str, ...]) -> None:
    (m,) = load_entries(tmp_path, entry(tags=value)).models
    assert m.tags == expected


@pytest.mark.parametrize("value", [["a", 1], 5, {"a": 1}, [["a"]]])
def test_tags_rejected(tmp_path: Path, value: Any) -> None:
    broken = only_broken(load_entries(tmp_path, entry("m", tags=value)))
    assert "field 'tags' must be a list of strings or a comma-separated string" in broken.message
    assert broken.tags == ()
    assert broken.name == "m"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("gfx942", ("gfx942",)), ("gfx908, gfx90a", ("gfx908", "gfx90a")), (["gfx942", " A100 "], ("gfx942", "A100"))],
)
def test_skip_gpu_arch(tmp_path: Path, value: Any, expected: tuple[str, ...]) -> None:
    (m,) = load_entries(tmp_path, entry(skip_gpu_arch=value)).models
    assert m.skip_gpu_arch == expected


def test_skip_gpu_arch_rejected(tmp_path: Path) -> None:
    broken = only_broken(load_entries(tmp_path, entry(skip_gpu_arch=[942])))
    assert "field 'skip_gpu_arch'" in broken.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (["A=1"], "must be an object"),
        ("A=1", "must be an object"),
        ({"A": {"x": 1}}, "value of 'A' must be a string or a number"),
        ({"A": None}, "value of 'A'"),
        ({"": "x"}, "empty variable name"),
    ],
)
def test_env_vars_rejected(tmp_path: Path, value: Any, fragment: str) -> None:
    broken = only_broken(load_entries(tmp_path, entry(env_vars=value)))
    assert "field 'env_vars'" in broken.message
    assert fragment in broken.message


@pytest.mark.parametrize("name", ["BAD-NAME", "2X", "A B", "X=1", "é"])
def test_env_vars_names_must_be_exportable(tmp_path: Path, name: str) -> None:
    """A name no shell can export (a SLURM task script would fail on it) breaks the entry."""
    broken = only_broken(load_entries(tmp_path, entry("m", env_vars={"OK_1": "x", name: "1"})))
    assert (f"models.json entry 0 ('m'): field 'env_vars' has {name!r}, which is not an environment "
            "variable name") in broken.message
    (m,) = load_entries(tmp_path, entry("m", env_vars={"_a": "1", "B2": "2"})).models
    assert dict(m.env_vars) == {"_a": "1", "B2": "2"}


@pytest.mark.parametrize(("args", "error"), [("--name 'unclosed", "No closing quotation"),
                                             ('--x "a b', "No closing quotation"),
                                             ("--x trailing\\", "No escaped character")])
def test_args_must_split_like_a_command_line(tmp_path: Path, args: str, error: str) -> None:
    broken = only_broken(load_entries(tmp_path, entry("m", args=args)))
    assert ("models.json entry 0 ('m'): field 'args' cannot be split like a shell "
            f"command line ({error})") in broken.message


@pytest.mark.parametrize("args", ["", "--batch 8", "--name 'a b' --q \"c d\" e\\ f", "--x=$HOME;ls"])
def test_args_that_split_are_kept_as_written(tmp_path: Path, args: str) -> None:
    (m,) = load_entries(tmp_path, entry("m", args=args)).models
    assert m.args == args


@pytest.mark.parametrize("key", ["name", "dockerfile", "scripts"])
def test_missing_required_field(tmp_path: Path, key: str) -> None:
    broken = only_broken(load_entries(tmp_path, entry("m", **{key: _DROP})))
    assert f"missing required field {key!r}" in broken.message
    assert broken.name == (None if key == "name" else "m")


@pytest.mark.parametrize("key", ["name", "dockerfile", "scripts"])
@pytest.mark.parametrize("value", [5, "", "   ", ["x"]])
def test_required_field_must_be_non_empty_string(tmp_path: Path, key: str, value: Any) -> None:
    broken = only_broken(load_entries(tmp_path, entry("m", **{key: value})))
    assert f"field {key!r} must be a non-empty string, got {value!r}" in broken.message


def test_name_with_surrounding_blanks_rejected(tmp_path: Path) -> None:
    broken = only_broken(load_entries(tmp_path, entry(" bert ")))
    assert "field 'name' must not start or end with blanks" in broken.message
    assert broken.name is None


@pytest.mark.parametrize("key", ["args", "url", "owner", "training_precision", "data", "multiple_results"])
def test_optional_string_fields_must_be_strings(tmp_path: Path, key: str) -> None:
    broken = only_broken(load_entries(tmp_path, entry("m", **{key: ["x"]})))
    assert f"models.json entry 0 ('m'): field {key!r} must be a string, got ['x']" in broken.message


@pytest.mark.parametrize("key", ["distributed", "slurm"])
def test_distributed_and_slurm_must_be_objects(tmp_path: Path, key: str) -> None:
    broken = only_broken(load_entries(tmp_path, entry(**{key: "torchrun"})))
    assert f"field {key!r} must be an object" in broken.message


def test_every_problem_of_an_entry_is_named(tmp_path: Path) -> None:
    broken = only_broken(load_entries(tmp_path, entry("m", n_gpus="x", timeout="y", scripts=_DROP)))
    for fragment in ("'n_gpus'", "'timeout'", "missing required field 'scripts'"):
        assert fragment in broken.message


@pytest.mark.parametrize(("value", "kind"), [([1, 2], "a list"), ("bert", "a string"), (None, "null"), (3, "int")])
def test_entry_not_an_object(tmp_path: Path, value: Any, kind: str) -> None:
    result = load_entries(tmp_path, entry("ok"), value)
    assert [m.name for m in result.models] == ["ok"]
    (broken,) = result.broken
    assert broken.index == 1 and broken.name is None
    assert broken.message.endswith(f"entry 1: must be an object with 'name', 'dockerfile' and 'scripts', got {kind}")


def test_long_bad_values_are_shortened(tmp_path: Path) -> None:
    broken = only_broken(load_entries(tmp_path, entry(n_gpus="x" * 500)))
    assert len(broken.message) < 300
    assert "..." in broken.message


def test_one_bad_entry_does_not_hide_the_others(tmp_path: Path) -> None:
    entries: list[Any] = [entry(f"m{i}") for i in range(10)]
    entries[4]["n_gpus"] = "lots"
    entries[7] = "junk"
    result = load_entries(tmp_path, *entries)
    assert [m.index for m in result.models] == [0, 1, 2, 3, 5, 6, 8, 9]
    assert [b.index for b in result.broken] == [4, 7]


def test_duplicate_names_within_a_file(tmp_path: Path) -> None:
    result = load_entries(tmp_path, entry("x"), entry("y"), entry("x", tags=["t"]), entry("x"))
    assert [m.name for m in result.models] == ["x", "y"]
    assert [b.index for b in result.broken] == [2, 3]
    assert result.broken[0].message.endswith("entry 2 ('x'): duplicate name 'x', first defined as entry 0")
    assert result.broken[0].tags == ("t",)
    assert result.broken[1].message.endswith("duplicate name 'x', first defined as entry 0")


def test_duplicate_of_a_broken_entry_is_also_broken(tmp_path: Path) -> None:
    result = load_entries(tmp_path, entry("x", n_gpus="bad"), entry("x"))
    assert result.models == []
    assert "first defined as entry 0" in result.broken[1].message


def test_invalid_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text('[\n  {\n    "name": "x",\n    "scripts" "run.sh"\n  }\n]\n')
    with pytest.raises(ModelsFileError) as info:
        load_models_file(path)
    message = str(info.value)
    assert message.endswith("models.json: invalid JSON at line 4, column 15: Expecting ':' delimiter")
    assert "\n" not in message


def test_invalid_json_missing_comma(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text('[\n  {"name": "a"}\n  {"name": "b"}\n]')
    with pytest.raises(ModelsFileError, match=r"invalid JSON at line 3, column 3: Expecting ',' delimiter"):
        load_models_file(path)


def test_empty_file_is_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text("")
    with pytest.raises(ModelsFileError, match=r"invalid JSON at line 1, column 1: Expecting value"):
        load_models_file(path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([entry()]).encode())
    assert [m.name for m in load_models_file(path).models] == ["dummy"]


@pytest.mark.parametrize(("data", "kind"), [({"name": "x"}, "an object"), ("x", "a str"), (3, "a int")])
def test_top_level_must_be_a_list(tmp_path: Path, data: Any, kind: str) -> None:
    path = write_json(tmp_path / "models.json", data)
    with pytest.raises(ModelsFileError, match=f"must hold a JSON list of model entries, got {kind}"):
        load_models_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="nope.json: cannot be read"):
        load_models_file(tmp_path / "nope.json")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_bytes(b'["\xff"]')
    with pytest.raises(ModelsFileError, match="is not UTF-8"):
        load_models_file(path)


def test_label_is_relative_to_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "scripts" / "pyt" / "models.json", [entry("m", n_gpus="x")])
    broken = only_broken(load_models_file(Path("scripts/pyt/models.json")))
    assert broken.message.startswith("scripts/pyt/models.json entry 0 ('m'): ")
    path = tmp_path / "models.json"
    path.write_text("[")
    with pytest.raises(ModelsFileError) as info:
        load_models_file(path)
    assert str(info.value).startswith("models.json: invalid JSON at line 1, column 2")


def test_scope_and_base_dir(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "scripts" / "pyt" / "models.json",
        [entry("bert", dockerfile="../../docker/x", scripts="run.sh"), entry("gpt", n_gpus="z")],
    )
    result = load_models_file(path, scope="pyt")
    (m,) = result.models
    assert (m.name, m.scope, m.base_dir) == ("pyt/bert", "pyt", path.parent)
    assert m.raw["name"] == "bert"  # the entry as written
    assert m.script_path == tmp_path / "scripts/pyt/run.sh"
    assert m.dockerfile_prefix == tmp_path / "docker/x"  # '..' collapsed, as madengine does
    (b,) = result.broken
    assert (b.name, b.scope) == ("pyt/gpt", "pyt")
    assert "entry 1 ('gpt')" in b.message


def test_explicit_base_dir(tmp_path: Path) -> None:
    (m,) = load_entries(tmp_path, entry(), base_dir=tmp_path / "elsewhere").models
    assert m.script_path == tmp_path / "elsewhere/scripts/dummy/run.sh"


def test_scoped_duplicate_message_uses_name_as_written(tmp_path: Path) -> None:
    path = write_json(tmp_path / "scripts" / "pyt" / "models.json", [entry("a"), entry("a")])
    result = load_models_file(path, scope="pyt")
    assert result.broken[0].name == "pyt/a"
    assert result.broken[0].message.endswith("entry 1 ('a'): duplicate name 'a', first defined as entry 0")


# -------------------------------------------------------------------- generators

GENERATOR_DICTS = """
def list_models():
    return [
        {"name": "g1", "dockerfile": "docker/x", "scripts": "run.sh", "n_gpus": "2", "tags": ["gen", "inference"]},
        {"name": "g2", "dockerfile": "docker/x", "scripts": "run.sh", "tags": "gen, training", "timeout": 60},
        {"name": "g3", "dockerfile": "docker/x", "scripts": "run.sh", "n_gpus": "many"},
    ]
"""

# The madengine way: CustomModel objects, one completed by update_model().
GENERATOR_MADENGINE = """
from madengine.utils.discover_models import CustomModel
import helper_for_generator

class Filled(CustomModel):
    def update_model(self):
        self.dockerfile = "docker/dummy"
        self.scripts = "run.sh"
        self.args = "--x " + helper_for_generator.VALUE

def list_models():
    return [
        CustomModel(name="model3", dockerfile="docker/dummy", scripts="run.sh", n_gpus="-1",
                    tags=["dummies", "dummy_test_group_3"]),
        Filled(name="model4", tags=["dummies", "dummy_test_group_3"]),
    ]
"""


def write_generator(tmp_path: Path, scope: str, source: str) -> Path:
    path = tmp_path / "scripts" / scope / "get_models_json.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


def test_generator_returning_dicts(tmp_path: Path) -> None:
    path = write_generator(tmp_path, "gen", GENERATOR_DICTS)
    result = load_generator_file(path, scope="gen")
    assert [m.name for m in result.models] == ["gen/g1", "gen/g2"]
    g1, g2 = result.models
    assert (g1.n_gpus, g1.tags, g1.scope, g1.base_dir, g1.source, g1.index) == (
        2,
        ("gen", "inference"),
        "gen",
        path.parent,
        path,
        0,
    )
    assert g1.script_path == path.parent / "run.sh"
    assert (g2.tags, g2.timeout) == (("gen", "training"), 60)
    (b,) = result.broken
    assert (b.name, b.index, b.scope) == ("gen/g3", 2, "gen")
    assert "get_models_json.py entry 2 ('g3'): field 'n_gpus'" in b.message


def test_generator_with_madengine_custom_model(tmp_path: Path) -> None:
    path = write_generator(tmp_path, "dummy3", GENERATOR_MADENGINE)
    (path.parent / "helper_for_generator.py").write_text("VALUE = 'y'\n")
    path_len, modules_before = len(sys.path), set(sys.modules)
    result = load_generator_file(path, scope="dummy3")
    assert result.broken == []
    m3, m4 = result.models
    assert (m3.name, m3.n_gpus, m3.tags, m3.timeout) == ("dummy3/model3", -1, ("dummies", "dummy_test_group_3"), 7200)
    assert (m4.name, m4.dockerfile, m4.scripts, m4.args) == ("dummy3/model4", "docker/dummy", "run.sh", "--x y")
    assert m4.raw["cred"] == ""  # CustomModel fields we do not model are kept
    # Nothing left behind: sys.path, the generator, its helper, the madengine stand-in.
    assert len(sys.path) == path_len
    assert str(path.parent) not in sys.path
    leaked = set(sys.modules) - modules_before
    assert not {n for n in leaked if "generator" in n or n.startswith("madengine")}
    assert not (path.parent / "__pycache__").exists()


def test_generators_with_same_named_helpers_do_not_share_them(tmp_path: Path) -> None:
    for scope, value in (("a", "1"), ("b", "2")):
        path = write_generator(
            tmp_path,
            scope,
            (
                "import helper\n"
                "def list_models():\n"
                "    return [{'name': helper.NAME, 'dockerfile': 'd', 'scripts': 's.sh'}]\n"
            ),
        )
        (path.parent / "helper.py").write_text(f"NAME = 'm{value}'\n")
    a = load_generator_file(tmp_path / "scripts/a/get_models_json.py", scope="a")
    b = load_generator_file(tmp_path / "scripts/b/get_models_json.py", scope="b")
    assert [m.name for m in a.models + b.models] == ["a/m1", "b/m2"]


def test_generator_bad_items_become_broken_entries(tmp_path: Path) -> None:
    path = write_generator(
        tmp_path,
        "gen",
        """
class Obj:
    name = "bad"
    tags = ["t"]
    def to_dict(self):
        raise RuntimeError("boom")

def list_models():
    return [42, Obj(), {"name": "ok", "dockerfile": "d", "scripts": "s.sh"}]
""",
    )
    result = load_generator_file(path, scope="gen")
    assert [m.name for m in result.models] == ["gen/ok"]
    first, second = result.broken
    assert first.name is None and "entry 0: TypeError: expected a dict or an object with to_dict(), got int" in (
        first.message
    )
    assert (second.name, second.tags) == ("gen/bad", ("t",))
    assert "entry 1 ('bad'): RuntimeError: boom" in second.message


def test_generator_may_return_any_iterable(tmp_path: Path) -> None:
    path = write_generator(
        tmp_path,
        "gen",
        """
def list_models():
    for i in range(3):
        yield {"name": f"m{i}", "dockerfile": "d", "scripts": "s.sh"}
""",
    )
    assert len(load_generator_file(path, scope="gen").models) == 3


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (
            "raise ValueError('no config\\nsecond line')",
            "get_models_json.py: importing it failed: ValueError: no config second line",
        ),
        ("import not_a_module_anywhere_xyz", "importing it failed: ModuleNotFoundError: No module named"),
        ("def list_models(:\n    pass", "importing it failed: SyntaxError"),
        ("import sys\nsys.exit(3)", "importing it failed: SystemExit: 3"),
        ("MODELS = []", "get_models_json.py: defines no list_models() function"),
        ("list_models = 5", "defines no list_models() function"),
        ("def list_models():\n    raise KeyError('cfg')", "get_models_json.py: list_models() raised KeyError: 'cfg'"),
        ("def list_models():\n    return {'name': 'x'}", "list_models() must return a list of models, got dict"),
        ("def list_models():\n    return None", "list_models() must return a list of models, got NoneType"),
    ],
)
def test_failing_generator(tmp_path: Path, source: str, fragment: str) -> None:
    path = write_generator(tmp_path, "gen", source)
    path_before = list(sys.path)
    with pytest.raises(ModelsFileError) as info:
        load_generator_file(path, scope="gen")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert sys.path == path_before


def test_generator_duplicates(tmp_path: Path) -> None:
    path = write_generator(
        tmp_path,
        "gen",
        """
def list_models():
    return [{"name": "a", "dockerfile": "d", "scripts": "s.sh"}] * 2
""",
    )
    result = load_generator_file(path, scope="gen")
    assert [m.name for m in result.models] == ["gen/a"]
    assert "duplicate name 'a', first defined as entry 0" in result.broken[0].message


# ---------------------------------------------------------- discovery, load_path


def make_zoo(root: Path) -> None:
    write_json(root / "models.json", [entry("dummy", tags=["dummies", "top"]), entry("dummy2", tags=["dummies"])])
    write_json(
        root / "scripts" / "pyt" / "models.json",
        [
            entry("bert", dockerfile="../../docker/pyt", scripts="run_bert.sh", tags=["nlp", "inference"]),
            entry("gpt2", dockerfile="../../docker/pyt", scripts="run_gpt2.sh", tags=["nlp", "training"]),
        ],
    )
    write_generator(root, "gen", GENERATOR_DICTS)
    (root / "scripts" / "aaa_empty").mkdir()
    (root / "scripts" / "dummy").mkdir()
    (root / "scripts" / "dummy" / "run.sh").write_text("echo hi\n")
    (root / "scripts" / "stray.json").write_text("[]")


def test_discover_order(tmp_path: Path) -> None:
    make_zoo(tmp_path)
    assert discover(tmp_path) == [
        tmp_path / "models.json",
        tmp_path / "scripts/gen/get_models_json.py",
        tmp_path / "scripts/pyt/models.json",
    ]


def test_discover_without_root_file_or_scripts(tmp_path: Path) -> None:
    assert discover(tmp_path) == []
    write_json(tmp_path / "scripts" / "x" / "models.json", [])
    assert discover(tmp_path) == [tmp_path / "scripts/x/models.json"]


def test_discover_lists_both_files_and_load_path_refuses_the_generator(tmp_path: Path) -> None:
    write_json(tmp_path / "scripts" / "both" / "models.json", [entry("a")])
    write_generator(tmp_path, "both", GENERATOR_DICTS)
    found = discover(tmp_path)
    assert found == [tmp_path / "scripts/both/models.json", tmp_path / "scripts/both/get_models_json.py"]
    assert [m.name for m in load_path(found[0], tmp_path).models] == ["both/a"]
    with pytest.raises(ModelsFileError, match="holds both models.json and get_models_json.py; keep only one"):
        load_path(found[1], tmp_path)


def test_load_path_dispatch(tmp_path: Path) -> None:
    make_zoo(tmp_path)
    results = [load_path(p, tmp_path) for p in discover(tmp_path)]
    top, gen, pyt = results
    assert [(m.name, m.scope, m.base_dir) for m in top.models] == [
        ("dummy", None, tmp_path),
        ("dummy2", None, tmp_path),
    ]
    assert [m.name for m in gen.models] == ["gen/g1", "gen/g2"]
    assert [(m.name, m.scope, m.base_dir) for m in pyt.models] == [
        ("pyt/bert", "pyt", tmp_path / "scripts/pyt"),
        ("pyt/gpt2", "pyt", tmp_path / "scripts/pyt"),
    ]
    assert pyt.models[0].dockerfile_prefix == tmp_path / "docker/pyt"


def test_load_path_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_zoo(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = load_path(Path("scripts/pyt/models.json"), Path("."))
    assert [m.name for m in result.models] == ["pyt/bert", "pyt/gpt2"]
    assert [m.name for m in load_path(Path("models.json"), Path(".")).models] == ["dummy", "dummy2"]


def test_load_path_other_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "elsewhere" / "my_models.json", [entry("mine")])
    (m,) = load_path(path, tmp_path).models
    assert (m.name, m.scope, m.base_dir) == ("mine", None, path.parent)
    # a models.json outside root/ and root/scripts/<dir>/ is not scoped either
    path = write_json(tmp_path / "deep" / "er" / "models.json", [entry("deep")])
    (m,) = load_path(path, tmp_path).models
    assert (m.name, m.scope, m.base_dir) == ("deep", None, path.parent)


# ---------------------------------------------------------------------- tags


def test_parse_tags_basic() -> None:
    assert parse_tags([]) == []
    assert parse_tags(["", " , "]) == []
    assert parse_tags(["dummy"]) == [TagSpec("dummy", None, "dummy", ())]
    assert parse_tags(["a,b", " c "]) == [
        TagSpec("a", None, "a", ()),
        TagSpec("b", None, "b", ()),
        TagSpec("c", None, "c", ()),
    ]


def test_parse_tags_extra_args() -> None:
    (spec,) = parse_tags(["dummy:batch_size=8:epochs=2"])
    assert spec == TagSpec("dummy:batch_size=8:epochs=2", None, "dummy", ("--batch_size", "8", "--epochs", "2"))
    (spec,) = parse_tags(["dummy: bs = 8 :verbose::--x=1:k=a=b"])
    assert spec.tag == "dummy"
    assert spec.extra_args == ("--bs", "8", "--verbose", "--x", "1", "--k", "a=b")
    (spec,) = parse_tags(["dummy:msg=hello world"])
    assert spec.extra_args == ("--msg", "hello world")  # one argument, never shell-split


def test_parse_tags_scope() -> None:
    assert parse_tags(["pyt/nlp"]) == [TagSpec("pyt/nlp", "pyt", "nlp", ())]
    assert parse_tags(["pyt/bert:bs=2"]) == [TagSpec("pyt/bert:bs=2", "pyt", "bert", ("--bs", "2"))]
    assert parse_tags(["a/b/c"])[0].scope is None
    assert parse_tags(["/x"])[0].scope is None
    assert parse_tags(["x/"])[0].scope is None


@pytest.mark.parametrize("text", [":bs=2", "dummy:=2"])
def test_parse_tags_errors(text: str) -> None:
    with pytest.raises(SelectionError, match="--mad-tags"):
        parse_tags([text])


# ------------------------------------------------------------------- selection


@pytest.fixture
def zoo(tmp_path: Path) -> list[Model | BrokenEntry]:
    make_zoo(tmp_path)
    results = [load_path(p, tmp_path) for p in discover(tmp_path)]
    candidates: list[Model | BrokenEntry] = []
    for r in results:
        candidates += [*r.models, *r.broken]
    return candidates


def pick(candidates: list[Model | BrokenEntry], *values: str) -> dict[str, tuple[str, ...]]:
    return select(candidates, parse_tags(list(values)))


def test_select_by_name_and_tag(zoo: list[Model | BrokenEntry]) -> None:
    assert pick(zoo, "dummy") == {"dummy": ()}
    assert pick(zoo, "dummies") == {"dummy": (), "dummy2": ()}
    assert list(pick(zoo, "nlp")) == ["pyt/bert", "pyt/gpt2"]
    assert list(pick(zoo, "pyt/bert")) == ["pyt/bert"]  # full name


def test_select_includes_broken_entries(zoo: list[Model | BrokenEntry]) -> None:
    # gen/g3 is broken (bad n_gpus) but selectable by name, so its failure is reported
    assert pick(zoo, "gen/g3") == {"gen/g3": ()}
    assert list(pick(zoo, "gen")) == ["gen/g1", "gen/g2"]


def test_select_all(zoo: list[Model | BrokenEntry]) -> None:
    assert list(pick(zoo, "all")) == ["dummy", "dummy2", "gen/g1", "gen/g2", "gen/g3", "pyt/bert", "pyt/gpt2"]


def test_no_specs_selects_everything(zoo: list[Model | BrokenEntry]) -> None:
    assert select(zoo, []) == {key_of(c): () for c in zoo}


def test_tags_are_ored_and_models_appear_once(zoo: list[Model | BrokenEntry]) -> None:
    assert list(pick(zoo, "top,nlp", "dummies", "dummy")) == ["dummy", "dummy2", "pyt/bert", "pyt/gpt2"]


def test_result_follows_candidate_order(zoo: list[Model | BrokenEntry]) -> None:
    assert list(pick(zoo, "pyt/gpt2", "dummy")) == ["dummy", "pyt/gpt2"]


def test_extra_args_from_every_selecting_tag_in_tag_order(zoo: list[Model | BrokenEntry]) -> None:
    got = pick(zoo, "dummies:bs=2", "dummy:epochs=1", "top:bs=2", "all")
    assert got["dummy"] == ("--bs", "2", "--epochs", "1")  # the identical '--bs 2' only once
    assert got["dummy2"] == ("--bs", "2")
    assert got["pyt/bert"] == ()


def test_scoped_tags(zoo: list[Model | BrokenEntry]) -> None:
    assert list(pick(zoo, "pyt/inference")) == ["pyt/bert"]
    assert list(pick(zoo, "pyt/all")) == ["pyt/bert", "pyt/gpt2"]
    assert list(pick(zoo, "gen/inference")) == ["gen/g1"]
    assert pick(zoo, "pyt/nlp:bs=4") == {"pyt/bert": ("--bs", "4"), "pyt/gpt2": ("--bs", "4")}
    assert pick(zoo, "pyt/bert:bs=4") == {"pyt/bert": ("--bs", "4")}
    # 'dummies' exists, but not in scope pyt
    with pytest.raises(SelectionError, match="'pyt/dummies' matches no model name or tag in scope 'pyt'"):
        pick(zoo, "pyt/dummies")


def test_scoped_tag_matches_root_models_named_with_the_prefix(tmp_path: Path) -> None:
    # madengine scopes by name prefix, so a root entry named 'pyt/x' is in scope 'pyt'
    root = load_models_file(write_json(tmp_path / "models.json", [entry("pyt/x", tags=["nlp"]), entry("y")]))
    assert list(select(root.models, parse_tags(["pyt/nlp"]))) == ["pyt/x"]


def test_literal_tag_with_a_slash(tmp_path: Path) -> None:
    root = load_models_file(write_json(tmp_path / "models.json", [entry("a", tags=["team/nlp"])]))
    assert list(select(root.models, parse_tags(["team/nlp"]))) == ["a"]


def test_nameless_broken_entries_are_always_selected(tmp_path: Path) -> None:
    path = write_json(tmp_path / "models.json", [entry("a"), entry("b", tags=["other"]), "junk", {"scripts": 1}])
    result = load_models_file(path)
    candidates: list[Model | BrokenEntry] = [*result.models, *result.broken]
    got = select(candidates, parse_tags(["other"]))
    assert got == {"b": (), f"{path}#2": (), f"{path}#3": ()}
    assert key_of(result.broken[0]) == f"{path}#2"
    assert key_of(result.models[0]) == "a"


def test_tag_only_matching_nameless_broken_entries_is_unknown(tmp_path: Path) -> None:
    result = load_models_file(write_json(tmp_path / "models.json", [entry("a"), "junk"]))
    with pytest.raises(SelectionError, match="'zzz' matches no model name or tag"):
        select([*result.models, *result.broken], parse_tags(["zzz"]))


def test_unknown_tag_message_with_suggestions(zoo: list[Model | BrokenEntry]) -> None:
    with pytest.raises(SelectionError) as info:
        pick(zoo, "dumy")
    assert str(info.value) == "--mad-tags: 'dumy' matches no model name or tag; closest: dummy, dummy2"


def test_unknown_tag_with_args_suggests_for_the_tag_part(zoo: list[Model | BrokenEntry]) -> None:
    with pytest.raises(SelectionError, match=r"'dumy:bs=2' matches no model name or tag; closest: dummy"):
        pick(zoo, "dumy:bs=2")


def test_unknown_tag_without_close_matches(zoo: list[Model | BrokenEntry]) -> None:
    with pytest.raises(SelectionError) as info:
        pick(zoo, "qqqqqqqq")
    assert str(info.value) == "--mad-tags: 'qqqqqqqq' matches no model name or tag"


def test_every_unknown_tag_is_reported(zoo: list[Model | BrokenEntry]) -> None:
    with pytest.raises(SelectionError) as info:
        pick(zoo, "dummy,nope1", "nlpp")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("--mad-tags: 'nope1'")
    assert lines[1].startswith("--mad-tags: 'nlpp'") and "closest: nlp" in lines[1]


def test_suggestions_are_at_most_five(tmp_path: Path) -> None:
    result = load_models_file(write_json(tmp_path / "models.json", [entry(f"model{i}") for i in range(20)]))
    with pytest.raises(SelectionError) as info:
        select(result.models, parse_tags(["model"]))
    closest = str(info.value).split("closest: ")[1].split(", ")
    assert len(closest) == 5


def test_exact_match_is_case_sensitive(zoo: list[Model | BrokenEntry]) -> None:
    with pytest.raises(SelectionError, match="closest: dummy"):
        pick(zoo, "DUMMY")


# ------------------------------------------------------------------- speed


def test_ten_thousand_entries_load_and_select(tmp_path: Path) -> None:
    # Correctness at scale only: speed is measured by benchmarks/bench_collection.py, not asserted.
    entries = [
        entry(
            f"model_{i}",
            tags=["dummies", f"group_{i % 50}"],
            n_gpus=str(i % 9 - 1),
            timeout=360,
            owner="x@example.com",
            training_precision="fp16",
            url="",
            skip_gpu_arch="gfx90a, gfx942",
            env_vars={"A": "1"},
            multiple_results="",
        )
        for i in range(10_000)
    ]
    path = tmp_path / "models.json"
    path.write_text(json.dumps(entries))
    result = load_path(path, tmp_path)
    got = select(result.models, parse_tags(["group_7,model_9999:bs=2", "dummies"]))
    assert len(result.models) == 10_000 and len(got) == 10_000
    assert got["model_9999"] == ("--bs", "2")
