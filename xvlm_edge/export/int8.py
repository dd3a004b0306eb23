"""INT8 export: the fastest quantisation plan that passes the accuracy gate, found by measuring.

Each graph has options, fastest first (`graph_options`): on ONNX Runtime dynamic INT8 or float (for the vision
graph too: faster and closer to fp32 than static QDQ there, `quantize.py`); for TensorRT, which runs no
dynamic-quantisation ops, the vision graph static QDQ (calibrated) or float, the rest float. A decoder's
`*_score` graph follows its `*_step` graph.

The search (`PlanSearch`):
1. quantise every graph with its fastest option and run the gate (`gate.py`) on the eval set; the fp32
   reference's outputs are collected once, through a runtime that also records each graph's real inputs;
2. while a metric fails (and not `strict`): for each quantised graph that a failing metric runs through
   (`gate.TASK_GRAPHS`), its next move is to keep in float the MatMuls the sensitivity search finds worth it
   on the recorded inputs (`sensitivity.py`, at most `sensitivity_budget` per graph), and after that to
   step down to the graph's next option. Moves are tried cheapest first (the weight bytes they return to
   float), each re-measuring only the failing metrics' tasks with that one change; the first that passes is
   kept, else the one that gains most, and the loop goes on;
3. the plan, why each graph ended where it did, and the gate's metrics on the whole eval set go in the
   manifest and on the terminal.
A trial costs one quantisation of one graph (the vision graph's calibration ranges and every graph's ORT
pre-processing are made once, `quantize.GraphQuantizer`) and a partial gate run.

The search is the same for every target; what differs is a `QuantTarget`: its graphs' options, a writer that
quantises one graph by a plan, a runtime over a set of files (the candidate the gate measures), and whether it
has the per-MatMul sensitivity search. `OnnxTarget` (here) serves onnxruntime and tensorrt;
`export.executorch.ExecuTorchTarget` serves executorch (XNNPACK dynamic INT8 or float, whole graphs).
"""

from __future__ import annotations

import logging
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from xvlm_edge.errors import InputError
from xvlm_edge.export.gate import (
    METRIC_TASK,
    TASK_GRAPHS,
    AccuracyGateError,
    Thresholds,
    collect,
    compare,
    failures,
    gate_tasks,
)
from xvlm_edge.export.quantize import DEFAULT_EXCLUDE, GraphQuantizer, qdq_violations, to_pixels
from xvlm_edge.graphs import DECODER_HEADS, SCORE, STEP, catalogue, decoder_graph
from xvlm_edge.manifest import ExportManifest
from xvlm_edge.runtime.base import Runtime

log = logging.getLogger(__name__)

STATIC, DYNAMIC, FLOAT = "static", "dynamic", "float"
DESCRIPTIONS = {
    STATIC: "static QDQ int8 (per-channel int8 weights, MinMax-calibrated uint8 activations)",
    DYNAMIC: "dynamic int8 (int8 weights of the constant-weight MatMuls, activation ranges per call)",
    FLOAT: "float32",
}
#: Images calibrating the static graph, and images of the gate's eval set (one image moves agreement by
#: under 2 %). Both are `quantize.synthetic_images` unless the user gives a folder.
CALIBRATION_IMAGES = 32
EVAL_IMAGES = 64
#: MatMuls per graph the search may keep in float before it keeps the whole graph in float.
SENSITIVITY_BUDGET = 4
#: Recorded inputs per graph the sensitivity search measures on.
RECORDED_CALLS = 4
#: Share of a graph's weight bytes a move is taken to return to float, to order moves cheapest first.
_MOVE_COST = {"search": 0.1, (DYNAMIC, FLOAT): 1.0, (STATIC, FLOAT): 1.0}


def graph_options(name: str, target: str) -> tuple[str, ...]:
    """A graph's quantisation options on `target`, fastest first. On ONNX Runtime dynamic INT8 is both faster
    and closer to fp32 than static QDQ, also for the vision graph (`quantize.py`); TensorRT runs Q/DQ only.
    ExecuTorch: XNNPACK's dynamic INT8 or float; static INT8 of the vision graph was measured unusable there
    (cosine 0.47 to fp32, against 0.9997 dynamic)."""
    if target in ("onnxruntime", "executorch"):
        return (DYNAMIC, FLOAT)
    return (STATIC, FLOAT) if name == "vision" else (FLOAT,)


def _leaders(names: Sequence[str]) -> dict[str, str]:
    """{graph: the graph whose plan it follows}: a decoder's score graph follows its step graph."""
    follows = {}
    for decoder in DECODER_HEADS:
        step, score = decoder_graph(decoder, STEP), decoder_graph(decoder, SCORE)
        if step in names and score in names:
            follows[score] = step
    return follows


@dataclass
class GraphPlan:
    """How one graph is quantised, and why it ended there."""

    option: str
    kept_float: list[str] = field(default_factory=list)
    searched: bool = False  # the sensitivity search ran for this option
    reason: str = "fastest option"

    def describe(self, descriptions: dict[str, str] = DESCRIPTIONS) -> str:
        kept = f"; {len(self.kept_float)} sensitive MatMuls kept float" if self.kept_float else ""
        return descriptions[self.option] + kept


@dataclass(frozen=True)
class Int8Settings:
    """What the user asked of an INT8 export (`export_model`'s arguments)."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    force: bool = False
    strict: bool = False
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    keep_fp32: tuple[str, ...] = ()
    sensitivity_budget: int = SENSITIVITY_BUDGET
    reduce_range: bool = False
    reduce_range_source: str = "detected"
    threads: int | None = None
    progress: bool = False


class _RecordingRuntime(Runtime):
    """The reference runtime, keeping the first inputs each graph saw: real feeds for the sensitivity search."""

    def __init__(self, inner: Runtime, names: dict[str, tuple[str, ...]]) -> None:
        self.inner, self.names = inner, names
        self.name, self.device, self.precision, self.info = inner.name, inner.device, inner.precision, inner.info
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {}

    def run(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seen = self.feeds.setdefault(graph, [])
        if len(seen) < RECORDED_CALLS:
            seen.append({n: x.detach().cpu().numpy() for n, x in zip(self.names[graph], inputs)})
        return self.inner.run(graph, *inputs)

    def has(self, graph: str) -> bool:
        return self.inner.has(graph)

    def output_names(self, graph: str) -> tuple[str, ...]:
        return self.inner.output_names(graph)

    def cache_shape(self, decoder: str) -> tuple[int, int, int]:
        return self.inner.cache_shape(decoder)


@dataclass
class _Move:
    graph: str
    kind: str  # "search", or the option stepped down to
    cost: float


class QuantTarget(ABC):
    """What the plan search needs of an export target (see the module docstring)."""

    #: the graph files' suffix; the chosen files are left in `out_dir`
    suffix: str
    out_dir: Path
    fp32_manifest: ExportManifest
    #: what each option means on this target, for the manifest
    descriptions: ClassVar[dict[str, str]] = DESCRIPTIONS
    #: whether `search` keeps single MatMuls in float (else a failing graph steps down whole)
    searchable: bool = False

    @abstractmethod
    def options(self, name: str) -> tuple[str, ...]:
        """Graph `name`'s options, fastest first."""

    @abstractmethod
    def weight_bytes(self, name: str) -> int:
        """The graph's fp32 size, which orders the moves cheapest first."""

    @abstractmethod
    def write(self, name: str, plan: GraphPlan, dst: Path) -> None:
        """Quantise graph `name` by `plan` into `dst`."""

    @abstractmethod
    def runtime(self, files: dict[str, Path]) -> Runtime:
        """A runtime over `files` ({graph: path}), the fp32 manifest's names and shapes."""

    def candidate_manifest(self, files: dict[str, Path]) -> ExportManifest:
        """The fp32 manifest with its graphs' files replaced by `files` (absolute paths): what `runtime` reads."""
        graphs = {n: replace(self.fp32_manifest.graphs[n], file=str(path.resolve())) for n, path in files.items()}
        return replace(self.fp32_manifest, precision="int8", graphs=graphs)

    def search(self, name: str, plan: GraphPlan, feeds: list[dict[str, np.ndarray]]) -> GraphPlan:
        """`plan` with the MatMuls worth keeping in float, measured on `feeds` (only where `searchable`)."""
        return replace(plan, searched=True)


class OnnxTarget(QuantTarget):
    """ONNX files for ONNX Runtime or TensorRT: `quantize.GraphQuantizer` per graph over the fp32 ONNX in
    `fp32_dir`, the per-MatMul sensitivity search, and ONNX Runtime as the candidate the gate measures."""

    suffix = ".onnx"
    searchable = True

    def __init__(
        self,
        checkpoint,
        fp32_dir: Path,
        out_dir: Path,
        work: Path,
        target: str,
        settings: Int8Settings,
        calibration: list[np.ndarray],
        fp32_manifest: ExportManifest,
    ) -> None:
        self.fp32_dir, self.out_dir, self.target, self.settings = fp32_dir, out_dir, target, settings
        self.fp32_manifest = fp32_manifest
        names = list(catalogue(checkpoint.config.heads))
        self.follows = _leaders(names)
        pixels = to_pixels(calibration, checkpoint.config.vision.image_res)
        self.quantizers = {
            name: GraphQuantizer(
                fp32_dir / f"{name}.onnx", work / name, reduce_range=settings.reduce_range, exclude=settings.exclude,
                pixels=pixels if name == "vision" else None,
            )
            for name in names
        }  # fmt: skip
        self.bytes = {name: (fp32_dir / f"{name}.onnx").stat().st_size for name in names}

    def options(self, name: str) -> tuple[str, ...]:
        return graph_options(name, self.target)

    def weight_bytes(self, name: str) -> int:
        return self.bytes[name]

    def write(self, name: str, plan: GraphPlan, dst: Path) -> None:
        src = self.fp32_dir / f"{name}.onnx"
        quantizer = self.quantizers[name]
        kept = plan.kept_float
        if name in self.follows:  # a score graph: the step graph's kept nodes where it has the same nodes
            kept = [n for n in kept if n in set(quantizer.candidates(constant_weight_only=False))]
        if plan.option == FLOAT:
            shutil.copyfile(src, dst)
        elif plan.option == STATIC:
            quantizer.static(dst, kept)
        else:
            quantizer.dynamic(dst, kept)
        violations = qdq_violations(dst)
        if violations:
            raise AccuracyGateError({}, [f"{name}: {v}" for v in violations[:5]])

    def runtime(self, files: dict[str, Path]) -> Runtime:
        """ONNX Runtime over `files`."""
        from xvlm_edge.runtime.onnxruntime_backend import OnnxRuntime

        return OnnxRuntime(self.out_dir, manifest=self.candidate_manifest(files), threads=self.settings.threads)

    def search(self, name: str, plan: GraphPlan, feeds: list[dict[str, np.ndarray]]) -> GraphPlan:
        from xvlm_edge.export.sensitivity import search_sensitive_nodes

        quantizer = self.quantizers[name]
        candidates = quantizer.candidates(constant_weight_only=plan.option != STATIC)
        if not feeds or not candidates:
            return replace(plan, searched=True)

        def quantize(_src: Path, dst: Path, keep: Sequence[str]) -> None:
            self.write(name, replace(plan, kept_float=list(keep)), dst)

        found = search_sensitive_nodes(
            quantizer.src, quantize, feeds, candidates, self.settings.sensitivity_budget, threads=self.settings.threads
        )
        reason = "sensitivity search" if found.kept_float else plan.reason
        return replace(plan, kept_float=found.kept_float, searched=True, reason=reason)


class PlanSearch:
    """The search of the module docstring over `target`'s graphs, leaving the chosen files in `target.out_dir`."""

    def __init__(self, checkpoint, target: QuantTarget, work: Path, settings: Int8Settings, eval_images: list[np.ndarray]) -> None:
        from xvlm_edge.api import Model
        from xvlm_edge.runtime import create_runtime

        self.checkpoint, self.target, self.settings, self.work = checkpoint, target, settings, work
        self.images = eval_images
        self.specs = catalogue(checkpoint.config.heads)
        self.follows = _leaders(list(self.specs))
        torch_runtime = create_runtime(checkpoint.model, backend="torch", device="cpu")
        self.recorder = _RecordingRuntime(torch_runtime, {n: s.inputs for n, s in self.specs.items()})
        self.reference_model = Model(checkpoint, self.recorder)
        self.Model = Model
        self.plan: dict[str, GraphPlan] = {}
        self.trials: list[dict[str, Any]] = []
        self._searched: dict[tuple[str, str], GraphPlan] = {}  # (graph, option) -> the sensitivity search's plan

    # -- files -------------------------------------------------------------------------------------------

    def _path(self, directory: Path, name: str) -> Path:
        return directory / f"{name}{self.target.suffix}"

    def _files(self, overrides: dict[str, Path] | None = None) -> dict[str, Path]:
        files = {n: self._path(self.target.out_dir, n) for n in self.specs}
        return {**files, **(overrides or {})}

    # -- measuring ----------------------------------------------------------------------------------------

    def _measure(self, tasks: tuple[str, ...], overrides: dict[str, Path] | None = None) -> dict[str, float]:
        candidate = collect(self.Model(self.checkpoint, self.target.runtime(self._files(overrides))), self.images, tasks)
        return compare(self.reference, candidate, self.checkpoint.config.check_threshold)

    def _failed(self, metrics: dict[str, float]) -> list[str]:
        return [line.split()[0] for line in failures(metrics, self.settings.thresholds)]

    def _deficit(self, metrics: dict[str, float], names: list[str]) -> float:
        least = asdict(self.settings.thresholds)
        return sum(max(0.0, least[m] - metrics[m]) / least[m] for m in names if m in metrics)

    # -- moves --------------------------------------------------------------------------------------------

    def _next_move(self, name: str) -> _Move | None:
        plan = self.plan[name]
        if plan.option == FLOAT:
            return None
        weight_bytes = self.target.weight_bytes(name)
        if not plan.searched and self.settings.sensitivity_budget > 0 and self.target.searchable:
            return _Move(name, "search", _MOVE_COST["search"] * weight_bytes)
        options = self.target.options(name)
        lower = options[options.index(plan.option) + 1]
        return _Move(name, lower, _MOVE_COST[(plan.option, lower)] * weight_bytes)

    def _planned(self, move: _Move) -> GraphPlan:
        """The plan of `move.graph` after `move` (the sensitivity search runs here, once per graph and option)."""
        plan = self.plan[move.graph]
        if move.kind != "search":
            return GraphPlan(move.kind, reason=f"{plan.option} failed the gate")
        key = (move.graph, plan.option)
        if key not in self._searched:  # a search tried and not taken in one round is offered again in the next
            self._searched[key] = self.target.search(move.graph, plan, self.recorder.feeds.get(move.graph, []))
        return self._searched[key]

    def _apply(self, name: str, plan: GraphPlan) -> None:
        self.plan[name] = plan
        self.target.write(name, plan, self._path(self.target.out_dir, name))
        for follower, leader in self.follows.items():
            if leader == name:
                self.plan[follower] = replace(plan, reason=f"follows {leader}")
                self.target.write(follower, self.plan[follower], self._path(self.target.out_dir, follower))

    def run(self) -> dict[str, float]:
        """Search, leave the chosen graphs in `out_dir`, and return the gate's metrics on every task."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        tasks = gate_tasks(self.checkpoint.config.heads)
        bar = tqdm(desc="int8 plan", unit="step", disable=not self.settings.progress, total=None)
        bar.set_postfix_str("fp32 reference")
        self.reference = collect(self.reference_model, self.images, tasks)
        bar.update()
        for name in self.specs:
            if name in self.follows:
                continue
            if name in self.settings.keep_fp32:
                self._apply(name, GraphPlan(FLOAT, reason="kept fp32 (--keep-fp32)"))
            else:
                self._apply(name, GraphPlan(self.target.options(name)[0]))
            bar.set_postfix_str(f"quantised {name}")
            bar.update()
        metrics = self._measure(tasks)
        failed = self._failed(metrics)
        while failed and not (self.settings.strict or self.settings.force):
            failing_tasks = tuple(dict.fromkeys(METRIC_TASK[m] for m in failed))
            suspects = dict.fromkeys(g for t in failing_tasks for g in TASK_GRAPHS[t] if g in self.plan)
            moves = sorted(filter(None, (self._next_move(g) for g in suspects)), key=lambda m: m.cost)
            if not moves:
                break
            best: tuple[float, float, _Move, GraphPlan, dict] | None = None
            for move in moves:
                plan = self._planned(move)
                if move.kind == "search" and not plan.kept_float:  # nothing sensitive: the graph is unchanged
                    self.plan[move.graph] = plan
                    continue
                trial = self._path(self.work / "trial", move.graph)
                trial.parent.mkdir(exist_ok=True)
                self.target.write(move.graph, plan, trial)
                trial_metrics = self._measure(failing_tasks, {move.graph: trial})
                deficit = self._deficit(trial_metrics, failed)
                self.trials.append({"graph": move.graph, "move": move.kind, "kept_float": len(plan.kept_float), "metrics": trial_metrics})
                bar.set_postfix_str(f"{move.graph}: {move.kind} -> deficit {deficit:.3f}")
                bar.update()
                if best is None or (deficit, move.cost) < (best[0], best[1]):
                    best = (deficit, move.cost, move, plan, trial_metrics)
                if deficit == 0:
                    break
            if best is None:  # every move was a search that found nothing: the next round steps down
                continue
            _, _, move, plan, trial_metrics = best
            measured = ", ".join(f"{k} {v:.4f}" for k, v in trial_metrics.items())
            log.info("int8 plan: %s -> %s (%s)", move.graph, plan.describe(self.target.descriptions), measured)
            self._apply(move.graph, plan)
            metrics = {**metrics, **self._measure(tuple(t for t in tasks if move.graph in TASK_GRAPHS[t]))}
            failed = self._failed(metrics)
        bar.close()
        self.seconds = time.perf_counter() - started
        return {"eval_images": float(len(self.images)), **metrics}

    def record(self) -> dict[str, Any]:
        """The plan as the manifest records it."""
        return {
            graph: {"option": p.option, "kept_float": p.kept_float, "reason": p.reason, "description": p.describe(self.target.descriptions)}
            for graph, p in self.plan.items()
        }


def check_keep_fp32(keep_fp32: Sequence[str], names: Sequence[str]) -> None:
    unknown = set(keep_fp32) - set(names)
    if unknown:
        raise InputError(f"--keep-fp32 names graphs this checkpoint lacks: {sorted(unknown)} (has {sorted(names)})")


__all__ = [
    "CALIBRATION_IMAGES",
    "DESCRIPTIONS",
    "EVAL_IMAGES",
    "SENSITIVITY_BUDGET",
    "GraphPlan",
    "Int8Settings",
    "OnnxTarget",
    "PlanSearch",
    "QuantTarget",
    "graph_options",
]
