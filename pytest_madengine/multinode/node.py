"""One model on one node of a multi-node run: before the script, the barrier (and the check
that the mirror folder is shared); after it, this node's verdict and, on node 0, the
per-rank values of every node combined.

Results (madengine runs every node independently and reads each node's log; a node without a
``performance:`` line is a FAILURE there, so scripts that print only on rank 0 fail on every
other node, and values of several ranks are never combined). Here:

* every node's item passes or fails on its own output: exit code, timeout, values that are
  not numbers;
* node 0 reports the run's performance. Other nodes pass on exit 0 without a performance
  line; their perf.csv row has an empty performance (so rows of all nodes can be put
  together without counting a value twice), and a value they print anyway is kept as the
  property ``node_performance``;
* rank-tagged values (see ``ranks.py``) of all nodes are sent to node 0 after the run and
  combined there with the metric's aggregation rule (property ``aggregation``); node 0 fails
  when a node that reported per-rank values before, or a per-rank file, is missing.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import MetricsError, UsageError
from pytest_madengine.multinode import rendezvous
from pytest_madengine.multinode.ranks import RankValue, combine, rank_file_values, rank_files, rank_lines
from pytest_madengine.multinode.settings import MultiNode
from pytest_madengine.output import OutputSink
from pytest_madengine.results.result import SUCCESS, ModelResult, Row

MARKER_PREFIX = ".pytest-madengine-mirror-"


def check_mirror(path: Path | None) -> Path | None:
    """``--mad-force-mirror-local PATH`` must be an existing folder: it is never created
    (madengine creates a local folder when the shared mount is missing, and the nodes then
    read different data)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute():
        raise UsageError(f"--mad-force-mirror-local {path}: give an absolute path (it is mounted at the same "
                         "path in containers and must name the same folder on every node)")
    if not p.exists():
        raise UsageError(f"--mad-force-mirror-local {p}: no such folder; it is not created here: mount the "
                         "shared file system (or create the folder) first")
    if not p.is_dir():
        raise UsageError(f"--mad-force-mirror-local {p}: not a folder")
    return p


def mirror_env(path: Path | None) -> dict[str, str]:
    return {"MAD_DATAHOME": str(path)} if path is not None else {}


def mirror_context_mounts(path: Path | None) -> dict[str, str]:
    """docker_mounts entry (container path -> host path): the same path inside."""
    return {str(path): str(path)} if path is not None else {}


@dataclass
class NodeRun:
    """The multi-node side of one ``run_model`` call."""

    mn: MultiNode
    model: str
    mirror: Path | None = None
    link: rendezvous.Link | None = None
    marker: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.mn.master_addr}:{self.mn.rendezvous_port}"

    # ------------------------------------------------------------------ before the script

    def abandon(self, reason: str, sink: OutputSink | None = None, cancel: Any = None) -> None:
        """This node failed before the meeting (its image build, its run folder): tell the
        others now, so they fail in seconds naming this node, not at the rendezvous timeout."""
        if not self.mn.needs_barrier:
            return
        token = rendezvous.token_for(self.model, self.mn.nnodes)
        if sink is not None:
            sink.note(f"rendezvous: telling the other nodes that node {self.mn.node_rank} failed: {reason}")
        try:
            if self.mn.node_rank == 0:
                rendezvous.lead(port=self.mn.rendezvous_port, where=self.where, nnodes=self.mn.nnodes, token=token,
                                model=self.model, timeout=self.mn.rendezvous_timeout, cancel=cancel, failed=reason)
            else:
                rendezvous.follow(addr=self.mn.master_addr, port=self.mn.rendezvous_port, where=self.where,
                                  rank=self.mn.node_rank, token=token, model=self.model,
                                  timeout=self.mn.rendezvous_timeout, cancel=cancel, failed=reason)
        except (rendezvous.RendezvousFailed, OSError):
            pass  # expected: the meeting is off; this node's own reason stands

    def join(self, sink: OutputSink | None = None, cancel: Any = None) -> str:
        """Wait for the other nodes. Returns "" to go on, else the item's failure reason."""
        if not self.mn.needs_barrier:
            return ""
        token = rendezvous.token_for(self.model, self.mn.nnodes)
        note = sink.note if sink is not None else (lambda text: None)
        note(f"rendezvous: node {self.mn.node_rank} of {self.mn.nnodes} waiting at {self.where} "
             f"(timeout {self.mn.rendezvous_timeout:g} s)")
        try:
            if self.mn.node_rank == 0:
                offer: dict[str, Any] = {}
                if self.mirror is not None:
                    offer["mirror"] = self._write_marker()
                self.link = rendezvous.lead(port=self.mn.rendezvous_port, where=self.where, nnodes=self.mn.nnodes,
                                            token=token, model=self.model, timeout=self.mn.rendezvous_timeout,
                                            offer=offer, cancel=cancel)
            else:
                self.link = rendezvous.follow(addr=self.mn.master_addr, port=self.mn.rendezvous_port,
                                              where=self.where, rank=self.mn.node_rank, token=token,
                                              model=self.model, timeout=self.mn.rendezvous_timeout,
                                              check=self._check_offer, cancel=cancel)
        except rendezvous.RendezvousFailed as exc:
            self._remove_marker()
            return str(exc)
        except OSError as exc:
            self._remove_marker()
            return f"rendezvous at {self.where}: {exc.strerror or exc}"
        note(f"rendezvous: all {self.mn.nnodes} nodes joined; starting")
        return ""

    def _write_marker(self) -> dict[str, str]:
        assert self.mirror is not None
        token = secrets.token_hex(16)
        self.marker = self.mirror / f"{MARKER_PREFIX}{rendezvous.token_for(self.model, self.mn.nnodes)}"
        try:
            tmp = self.marker.with_name(self.marker.name + ".tmp")
            tmp.write_text(token + "\n", encoding="ascii")
            os.replace(tmp, self.marker)
        except OSError as exc:
            self.marker = None
            return {"path": str(self.mirror), "error": f"node 0 cannot write into {self.mirror}: "
                                                      f"{exc.strerror or exc}"}
        return {"path": str(self.mirror), "file": self.marker.name, "token": token}

    def _check_offer(self, offer: Mapping[str, Any]) -> str | None:
        """A peer's check of node 0's offer: the mirror folder must be the same folder."""
        raw = offer.get("mirror")
        theirs: Mapping[str, Any] | None = raw if isinstance(raw, Mapping) else None
        if self.mirror is None:
            if theirs is None:
                return None
            return (f"node 0 uses --mad-force-mirror-local {theirs.get('path')}, node {self.mn.node_rank} "
                    "does not; give it on every node")
        if theirs is None:
            return f"node {self.mn.node_rank} uses --mad-force-mirror-local {self.mirror}, node 0 does not"
        if theirs.get("error"):
            return str(theirs["error"])
        seen = self.mirror / str(theirs.get("file", ""))
        try:
            ok = seen.read_text(encoding="ascii").strip() == theirs.get("token")
        except OSError:
            ok = False
        if not ok:
            return (f"{self.mirror} is not shared between the nodes: node 0's marker {theirs.get('file')} "
                    f"(written into {theirs.get('path')}) is not visible on node {self.mn.node_rank}")
        return None

    def _remove_marker(self) -> None:
        if self.marker is not None:
            try:
                self.marker.unlink()
            except OSError:
                pass
            self.marker = None

    # ------------------------------------------------------------------ after the script

    def finish(self, result: ModelResult, *, outcome_ok: bool, log_path: Path, run_dir: Path,
               multiple_results: str, nothing_reported: bool, cancel: Any = None) -> None:
        """Decide this node's result (see the module docstring) and combine per-rank values."""
        mn = self.mn
        result.properties.update(mn.properties())
        result.nnodes, result.launcher = mn.nnodes, mn.runner
        values: list[RankValue] = []
        problem = ""
        if outcome_ok:
            try:
                values = self._local_values(log_path, run_dir, multiple_results)
            except MetricsError as exc:
                problem = str(exc)
        try:
            if mn.node_rank != 0:
                self._peer_verdict(result, outcome_ok=outcome_ok, nothing_reported=nothing_reported,
                                   problem=problem, values=values)
                if self.link is not None:
                    warning = self.link.report({"status": result.status, "reason": result.reason,
                                                "values": [v.to_dict() for v in values]})
                    if warning:
                        result.warnings.append(warning)
            else:
                self._root_verdict(result, outcome_ok=outcome_ok, nothing_reported=nothing_reported,
                                   problem=problem, values=values, cancel=cancel)
        finally:
            if self.link is not None:
                self.link.close()
                self.link = None
            self._remove_marker()

    def _local_values(self, log_path: Path, run_dir: Path, multiple_results: str) -> list[RankValue]:
        values: list[RankValue] = []
        try:
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                values += rank_lines(fh, self.model, self.mn.node_rank)
        except OSError:
            pass
        files = rank_files(run_dir, multiple_results)
        if files and not (run_dir / multiple_results).exists():
            values += rank_file_values(files, self.model, self.mn.node_rank)
        return values

    def _peer_verdict(self, result: ModelResult, *, outcome_ok: bool, nothing_reported: bool, problem: str,
                      values: list[RankValue]) -> None:
        result.properties["performance_reported_by"] = "node_rank 0"
        if not outcome_ok:
            return  # exit code, timeout, interruption: failed on its own output
        bad = next((v for v in values if v.value is None), None)
        if bad is not None:
            problem = problem or f"performance of {bad.source} is not a number: {bad.raw!r} {bad.metric}"
        if problem:
            result.fail(problem, rows="drop")
            return
        if result.status != SUCCESS and not (nothing_reported or values):
            return  # e.g. 'performance: NA' or a broken results file: this node's own output is wrong
        if result.rows:
            shown = ", ".join(f"{r.name}={r.performance:g} {r.metric}" for r in result.rows
                              if r.performance is not None)
            if shown:
                result.properties["node_performance"] = shown
        if values:
            result.properties["rank_values"] = str(len(values))
        result.succeed([Row(result.model, None, "", SUCCESS)])
        result.warnings = [w for w in result.warnings if "performance values printed" not in w]

    def _root_verdict(self, result: ModelResult, *, outcome_ok: bool, nothing_reported: bool, problem: str,
                      values: list[RankValue], cancel: Any) -> None:
        if not outcome_ok:
            return  # failed on its own output; the peers' reports would change nothing
        peers_values: list[RankValue] = []
        if self.link is not None:
            got, missing = self.link.collect(self.mn.rendezvous_timeout, cancel)
            failed = {r: p for r, p in got.items() if p.get("status") != SUCCESS}
            for _, payload in sorted(got.items()):
                peers_values += [RankValue.from_dict(v) for v in payload.get("values") or [] if isinstance(v, dict)]
            result.properties["peers_passed"] = f"{len(got) - len(failed)}/{self.mn.nnodes - 1}"
            why: dict[int, str] = {}
            for r, reason in sorted(missing.items()):
                why[r] = f"node {r} did not report its result: {reason}"
            for r, payload in sorted(failed.items()):
                why[r] = f"node {r} failed: {payload.get('reason') or payload.get('status')}"
            result.warnings += [why[r] for r in sorted(why)]
            # Values of several ranks are combined only when every node sent its own: a sum over
            # the nodes that happened to report is not the run's figure.
            contributed = ({0} if values else set()) | {r for r, p in got.items() if p.get("values")}
            sources = {v.source for v in values + peers_values}
            lacking = sorted(set(range(self.mn.nnodes)) - contributed)
            if len(sources) >= 2 and lacking and not problem:
                detail = "; ".join(why[r] for r in lacking if r in why)
                problem = (f"per-rank results are incomplete: node(s) {lacking} reported no per-rank values"
                           + (f" ({detail})" if detail else ""))
        if problem:
            result.fail(problem, rows="drop")
            return
        if result.status != SUCCESS and not nothing_reported:
            return  # its own output is wrong ('performance: NA', a broken results file)
        try:
            combined = combine(values + peers_values)
        except MetricsError as exc:
            result.fail(str(exc), rows="drop")
            return
        if combined is None:
            return  # one value or none: the ordinary rules decided
        result.succeed([Row(name, value, metric, SUCCESS) for name, value, metric in combined.rows])
        result.properties["aggregation"] = combined.rule
        result.properties["aggregated_ranks"] = str(combined.sources)
        result.warnings = [w for w in result.warnings if "performance values printed" not in w]
        result.warnings += combined.warnings


def nothing_reported(perf_lines: list[Any], hf_line: Any, multiple_results: str, run_dir: Path) -> bool:
    """The script printed no performance and wrote no results file."""
    if multiple_results:
        return not (run_dir / multiple_results).exists()
    return not perf_lines and hf_line is None
