"""A model's result and the rule that decides pass or fail; pure, no processes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_madengine.results.metrics import safe_extra

SUCCESS, FAILURE, SKIPPED = "SUCCESS", "FAILURE", "SKIPPED"


@dataclass
class Row:
    """One perf.csv row / one reported metric.

    ``extra``: the row's other ``multiple_results`` columns (name -> text, in file order), which
    go to perf.csv after its own columns and to JUnit as ``<column>:<row name>`` properties.
    Names are always made safe by :func:`~pytest_madengine.metrics.safe_extra` (stripped, no
    empty name, a clash with one of our columns kept as ``mr_<name>``).
    """

    name: str
    performance: float | None
    metric: str
    status: str
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.extra = safe_extra(self.extra or {})


@dataclass
class ModelResult:
    model: str
    status: str
    reason: str = ""
    rows: list[Row] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    log: str = ""
    executor: str = ""
    tags: tuple[str, ...] = ()
    n_gpus: int = 0
    gpus: tuple[int, ...] = ()
    runtime_ngpus: int | None = None  # GPUs the run really got (0 when run without devices)
    args: str = ""
    duration: float = 0.0
    build_duration: float = 0.0
    image: str = ""
    docker_sha: str = ""
    dockerfile: str = ""
    base_docker: str = ""
    nnodes: int = 1
    launcher: str = ""
    gpu_architecture: str = ""
    training_precision: str = ""
    dataname: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    perf_row: bool = True  # False: a run that measured nothing on purpose (--mad-skip-model-run)

    @property
    def passed(self) -> bool:
        return self.status == SUCCESS

    # A result's status is decided in this order: the run's outcome and its metrics
    # (``evaluate``), then the multi-node verdict, the baseline check, and the result hook.
    # Every step after ``evaluate`` changes it through these two methods only.

    def fail(self, reason: str, *, rows: str = "keep", only: set[str] | None = None) -> None:
        """Now a failure with ``reason`` (kept when one is already given and ``reason`` is "").
        ``rows``: "keep" them (marked failed: all, or those named in ``only``) or "drop" them."""
        self.status = FAILURE
        self.reason = reason or self.reason
        if rows == "drop":
            self.rows = []
        for row in self.rows:
            if only is None or row.name in only:
                row.status = FAILURE

    def skip(self, reason: str, *, perf_row: bool) -> None:
        """Now skipped (``perf_row``: whether perf.csv still gets a SKIPPED row, as for skip_gpu_arch)."""
        self.status, self.reason, self.rows, self.perf_row = SKIPPED, reason, [], perf_row

    def succeed(self, rows: list[Row]) -> None:
        """Now a success with these rows (a multi-node verdict: the nodes' combined values)."""
        self.status, self.reason, self.rows = SUCCESS, "", rows

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tags"], d["gpus"] = list(self.tags), list(self.gpus)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelResult:
        d = dict(d)
        d["rows"] = [Row(**r) for r in d.get("rows", [])]
        d["tags"], d["gpus"] = tuple(d.get("tags", ())), tuple(d.get("gpus", ()))
        return cls(**d)


def fmt_value(v: float) -> str:
    """Shortest text that keeps every digit a script printed (no 3.12e+06 for 3120750)."""
    return format(v, ".15g")
