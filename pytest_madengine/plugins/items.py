"""The models.json collector and its items."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.errors import MadError, MadWarning, ModelsFileError
from pytest_madengine.executors.docker.variants import Variant
from pytest_madengine.models import BrokenEntry, Model, load_path
from pytest_madengine.plugins import terminal
from pytest_madengine.results.result import FAILURE, SKIPPED, ModelResult
from pytest_madengine.session import MadSession, NotRunnable

SESSION_KEY = pytest.StashKey["MadSession"]()
MARKER_NAMES: set[str] = set()


def mad_session(config: pytest.Config) -> MadSession:
    return config.stash[SESSION_KEY]


class ModelFailed(Exception):
    def __init__(self, result: ModelResult) -> None:
        super().__init__(result.reason)
        self.result = result


class EntryBroken(Exception):
    pass


class ModelsFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        session = mad_session(self.config)
        try:
            loaded = load_path(self.path, session.options.root)
        except ModelsFileError as exc:
            yield BrokenItem.from_parent(self, name="[unreadable]", message=str(exc), tags=(), scope=None)
            return
        deployed = [m.name for m in loaded.models if m.raw.get("slurm") or _launcher(m) in ("slurm_multi", "slurm-multi")]
        if deployed and session.executor.name != "slurm":
            shown = ", ".join(deployed[:5]) + (f" and {len(deployed) - 5} more" if len(deployed) > 5 else "")
            self.warn(MadWarning(
                f"{self.path}: the model card field 'slurm' and the launcher slurm_multi ({shown}) act on the SLURM "
                f"executor only (--mad-executor=slurm, or 'slurm' in the context): this run uses "
                f"{session.executor.name}, where those models run their script with bash"))
        for model in loaded.models:
            duplicate = session.claim_name(model.name, self.path)
            if duplicate:
                yield BrokenItem.from_parent(self, name=model.name, message=f"{self.path}: {duplicate}",
                                             tags=model.tags, scope=model.scope)
                continue
            variants, warnings = session.variants(model)
            for text in warnings:
                self.warn(MadWarning(text))
            if len(variants) <= 1:
                yield ModelItem.from_parent(self, name=model.name, model=model,
                                            variant=variants[0] if variants else None)
                continue
            for variant in variants:  # madengine runs a model once per matching Dockerfile
                yield ModelItem.from_parent(self, name=f"{model.name}[{variant.label}]", model=model, variant=variant)
        for entry in loaded.broken:
            yield BrokenItem.from_parent(self, name=entry.name or f"[entry {entry.index}]", message=entry.message,
                                         tags=entry.tags, scope=entry.scope, entry=entry)


def _launcher(model: Model) -> str:
    dist = model.raw.get("distributed")
    return str(dist.get("launcher") or "") if isinstance(dist, dict) else ""


def _mark(item: pytest.Item, tags: tuple[str, ...]) -> None:
    for tag in tags:
        if tag not in MARKER_NAMES:
            MARKER_NAMES.add(tag)
            item.config.addinivalue_line("markers", f"{tag}: models.json tag")
        try:
            item.add_marker(tag)
        except (AttributeError, ValueError):
            pass  # names pytest cannot hold as markers still work with --mad-tags and -k


class ModelItem(pytest.Item):
    def __init__(self, *, model: Model, variant: Variant | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.model = model
        self.variant = variant  # the Dockerfile this item builds, when the executor builds one
        self.extra_args: tuple[str, ...] = ()
        self.mad_result: ModelResult | None = None
        self.mad_plan: str | None = None  # --mad-dry-run: the rendered plan
        self.mad_prebuilt: tuple[ModelResult, dict[str, Any]] | None = None  # --mad-build-only, built ahead
        self.mad_build_record: dict[str, Any] | None = None  # --mad-build-only: for the manifest
        _mark(self, model.tags)

    @property
    def tags(self) -> tuple[str, ...]:
        return self.model.tags

    @property
    def scope(self) -> str | None:
        return self.model.scope

    def runtest(self) -> None:
        session = mad_session(self.config)
        if session.options.dry_run:
            self._dry_run(session)
        live = None
        if session.options.live_output or self.config.getoption("capture") == "no":
            live = terminal.writer(self.config, newline=False)
        if session.options.build_only:  # the build phase (plugins/buildphase.py) may have built it already
            prebuilt = getattr(self, "mad_prebuilt", None)
            result, self.mad_build_record = prebuilt if prebuilt is not None else session.build_model(
                self.model, self.extra_args, self.variant, self.name)
        else:
            result = session.run_model(self.model, self.extra_args, live=live, variant=self.variant, item_name=self.name)
        self.mad_result = result
        self.config.hook.pytest_mad_result(item=self, result=result)
        if result.status == SKIPPED:
            pytest.skip(result.reason)
        if not result.passed:
            raise ModelFailed(result)

    def _dry_run(self, session: MadSession) -> None:
        """Print the plan a real run of this item would execute, and skip: no build, no
        container, no job, no GPU lease, no perf.csv row."""
        try:
            text = session.plan_item(self.model, self.extra_args, self.variant, self.name).render()
        except (NotRunnable, MadError) as exc:
            text = f"plan for {self.model.name}: not runnable: {exc}"
        self.mad_plan = text  # printed by the controller's reporter (xdist workers have no terminal)
        pytest.skip("dry run")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ModelFailed):
            r = excinfo.value.result
            text = f"{r.model}: {r.reason}"
            if r.tail:
                text += f"\n--- last {len(r.tail)} lines of {r.log} ---\n" + "\n".join(r.tail)
            return text
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"model {self.model.name} ({self.model.scripts})"


class BrokenItem(pytest.Item):
    """A models.json entry (or file) that cannot run: it fails with the validation message."""

    def __init__(self, *, message: str, tags: tuple[str, ...], scope: str | None,
                 entry: BrokenEntry | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.message = message
        self.tags = tags
        self.scope = scope
        self.entry = entry
        self.extra_args: tuple[str, ...] = ()
        self.mad_result: ModelResult | None = None

    def runtest(self) -> None:
        opts = mad_session(self.config).options
        self.mad_result = ModelResult(model=self.name, status=FAILURE, reason=self.message,
                                      executor="none", tags=self.tags,
                                      perf_row=opts.build_rows or not opts.build_only)  # build phase: rows if asked
        raise EntryBroken(self.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, EntryBroken):
            return self.message
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"invalid models.json entry {self.name}"
