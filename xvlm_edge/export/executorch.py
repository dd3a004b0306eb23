"""ExecuTorch export: one XNNPACK-lowered `.pte` per graph of the catalogue, for explicit bounds, checked against torch.

`export_model(MODEL_DIR, precision, target="executorch")` writes `MODEL_DIR/export/executorch-<precision>/`:
`<graph>.pte` per graph of the catalogue (one method, `forward`, inputs and outputs in catalogue order),
`manifest.json`, and copies of the checkpoint's `vocab.txt` and `config.json` (and `answer_list.json` when
there is one), so the directory is all the lamp's C++ SDK reads.

Shapes. Each graph goes through `torch.export` (non-strict) with a `torch.export.Dim` per dynamic axis of the
catalogue, bounded by `Bounds` (lamp-sized: 4 images, 32 phrases or statements, 40 tokens, 8 beams, 40 decoder
tokens), except that the vision and cross K/V programs take exactly one image (question): XNNPACK lowers no
reshape or slice with a symbolic size, so a dynamic image axis leaves every window partition and head split
outside it. Measured on the base preset's INT8 vision graph (2 threads): one image 249 ms and a 79 MiB arena,
1..4 images 265 ms and 273 MiB. The runtime runs B images as B calls, as it does for the decoder steps.
The catalogue's size relations (`graphs.AXIS_RELATIONS`):
- `total = past + new` is derived by torch.export itself (the self-attention mask's length is `Dim.AUTO`; the
  cache concatenation proves the sum). A derived Dim of two roots cannot be declared, so the sum has no bound
  of its own in the program: its memory is planned for past.max + new.max, and the manifest records the
  bound the runtime holds it to ([1, decoder_tokens]) and the relation.
- `rows = images x r` is a product of two Dims, which torch.export cannot express: traced, the grouped
  attention's `reshape(images, -1, ...)` guards `rows % images == 0` and specialises `rows // images != 1`
  (refused as "Constraints violated (rows)"). So the decoder step/score programs read one image's (question's)
  cross K/V: `images` is fixed at 1 and `rows` are that image's beams or candidate answers; the runtime runs
  B images as B calls. The cross K/V programs keep `images` dynamic.
- caption keys = 1 + N image tokens: fixed. The answer decoder's keys are question tokens: one Dim for
  `cross_k`'s keys and `cross_atts`' width, bounded like `tokens`.
Trace sizes are at least 2 (torch.export specialises a dimension seen at 0 or 1), so every bound is >= 2.

Memory. ExecuTorch plans every intermediate tensor at the upper bound of its dimensions. The arena of each
method (`execution_plan[0].non_const_buffer_sizes`: activations, inputs and outputs, not the weights, nor
XNNPACK's own scratch) is recorded per graph (`GraphFile.arena_bytes`) and printed. It grows with the bounds
a graph's largest tensors carry: decoder rows x (past + new) for the self-attention scores and cache, rows x
new x vocab for a score graph's logits (156 MiB for 8 beams x 40 new tokens of a 30522-word vocabulary),
images x (1 + N) for the vision graph.

Lowering. XNNPACK lowers no reshape with a symbolic size, so a dynamic graph becomes many XNNPACK partitions
with portable view and copy kernels between them (the tiny vision graph: 139), and lowering takes tens of
seconds per graph on 2 cores. An INT8 export starts from the fp32 export of the same weights and bounds.

Parity. As for ONNX (`onnx.check_parity`, the same code and bound `onnx.FP32_ATOL` of each output's scale),
every program is run by ExecuTorch's runtime at sizes that were not traced, the bounds themselves included
(where the planned memory is full), against the torch graph; past the bound the export is refused.

INT8 (`ExecuTorchTarget`, the plan search's target): XNNPACK's quantizer with symmetric per-channel int8
weights and dynamic per-call activation ranges (PT2E `prepare_pt2e`/`convert_pt2e`) on Linear and Conv,
modules whose qualified name contains an `exclude` substring left float (default: the patch embedding).
Static activations are not offered: the naive static INT8 vision graph was measured at cosine 0.47 to fp32.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from xvlm_edge.errors import InputError
from xvlm_edge.export.int8 import DESCRIPTIONS, DYNAMIC, FLOAT, GraphPlan, QuantTarget, graph_options
from xvlm_edge.export.onnx import FP32_ATOL, TRACE_SIZES, Sizes, check_parity, example_inputs
from xvlm_edge.graphs import (
    CROSS_KV,
    MAX_DECODER_TOKENS,
    MAX_TOKENS,
    SCORE,
    STEP,
    Graph,
    GraphSpec,
    build_graphs,
    decoder_shapes,
)
from xvlm_edge.manifest import ExportManifest, GraphFile, copy_reusable, export_dir
from xvlm_edge.runtime.base import Runtime
from xvlm_edge.runtime.executorch_backend import METHOD, PteMethod, require_executorch, set_threads

log = logging.getLogger(__name__)

TARGET = "executorch"
#: Files copied beside the programs, by manifest key (`answer_list` only when the checkpoint has one).
ASSETS = {"vocab": "vocab.txt", "config": "config.json", "answer_list": "answer_list.json"}
_DTYPE_NAMES = {torch.float32: "float32", torch.int64: "int64"}


@dataclass(frozen=True)
class Bounds:
    """The largest call each program takes (the smallest is 1, an empty decoder cache 0): what the lamp feeds
    at once. Calls past `images`, `text_rows` or `beams` are cut by the runtime; past `tokens` or
    `decoder_tokens` they are refused. Each bound costs planned memory (the module docstring)."""

    images: int = 4  # images per fusion / multimodal / NLVR2 call (vision and cross K/V programs take one)
    text_rows: int = 32  # phrases, statements or texts per text / fusion / multimodal / nlvr call
    tokens: int = MAX_TOKENS  # tokens per text or question (the official checkpoints' max_tokens)
    beams: int = 8  # decoder rows per call, all reading one image: beams, or one question's candidate answers
    decoder_tokens: int = MAX_DECODER_TOKENS  # cached + new tokens of one decoder row

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 4 if f.name == "decoder_tokens" else 2  # traced at >= 2 (past 2 + new 2 for the decoder)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"executorch bound {f.name} must be an integer >= {least} (torch.export traces sizes >= 2), got {value!r}")

    def ranges(self, spec: GraphSpec) -> dict[str, tuple[int, int]]:
        """{axis: (min, max)} of every axis name `axis_names` gives `spec`'s tensors."""
        decoder = spec.kind in (STEP, SCORE)
        return {
            "images": (1, self.images),
            "rows": (1, self.beams if decoder else self.text_rows),
            "tokens": (1, self.tokens),
            "keys": (1, self.tokens),
            "new": (1, self.decoder_tokens),
            "past": (0, self.decoder_tokens - 1),
            "total": (1, self.decoder_tokens),  # derived: past + new, held to this by the runtime
        }


def one_image(spec: GraphSpec) -> bool:
    """Whether the program takes exactly one image (question): vision and cross K/V (the module docstring)."""
    return spec.name == "vision" or spec.kind == CROSS_KV


def axis_names(spec: GraphSpec) -> dict[str, dict[int, str | None]]:
    """{tensor: {dim: the program's axis name, or None where the program fixes the dimension}}: the
    catalogue's axes, with the module docstring's relations applied."""
    caption = spec.decoder == "caption"
    rename: dict[str, str | None] = {"images": None} if one_image(spec) else {}
    if spec.kind in (STEP, SCORE):
        rename = {"images": None, "keys": None if caption else "keys", "cross_tokens": None if caption else "keys"}
    elif spec.kind == CROSS_KV:
        rename |= {"tokens": None if caption else "tokens", "keys": None if caption else "tokens"}
    return {tensor: {dim: rename.get(axis, axis) for dim, axis in axes.items()} for tensor, axes in spec.axes.items()}


@dataclass
class Recipe:
    """How one graph is exported: its example inputs (and the torch graph's outputs on them) and Dims."""

    spec: GraphSpec
    example: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    names: dict[str, dict[int, str | None]]
    ranges: dict[str, tuple[int, int]]

    def dynamic_shapes(self) -> tuple[dict[int, Any] | None, ...]:
        from torch.export import Dim

        dims: dict[str, Any] = {}
        for axis, (low, high) in self.ranges.items():
            dims[axis] = Dim.AUTO if axis == "total" else Dim(axis, min=low, max=high)
        shapes = []
        for tensor in self.spec.inputs:
            named = {d: dims[a] for d, a in self.names.get(tensor, {}).items() if a is not None}
            shapes.append(named or None)
        return tuple(shapes)

    def graph_file(self, path: Path, arena: int, quantization: str, int8_weights: int) -> GraphFile:
        from xvlm_edge.files import sha256_file

        tensors = dict(zip((*self.spec.inputs, *self.spec.outputs), (*self.example, *self.outputs)))
        shapes: dict[str, list[int | str]] = {}
        for tensor, x in tensors.items():
            named = self.names.get(tensor, {})
            shapes[tensor] = [named.get(d) or int(n) for d, n in enumerate(x.shape)]
        used = sorted({a for shape in shapes.values() for a in shape if isinstance(a, str)})
        return GraphFile(
            file=path.name,
            sha256=sha256_file(path),
            bytes=path.stat().st_size,
            inputs=list(self.spec.inputs),
            outputs=list(self.spec.outputs),
            dynamic_axes={t: {str(d): a for d, a in axes.items() if a is not None} for t, axes in self.names.items()},
            quantization=quantization,
            int8_matmuls=int8_weights,
            method=METHOD,
            dtypes={t: _DTYPE_NAMES[x.dtype] for t, x in tensors.items()},
            shapes=shapes,
            bounds={a: list(self.ranges[a]) for a in used},
            relations=["total = past + new"] if "total" in used else [],
            arena_bytes=arena,
        )


def recipes(model, graphs: dict[str, Graph], bounds: Bounds) -> dict[str, Recipe]:
    """Every graph's recipe: encoders and cross K/V traced at `onnx.TRACE_SIZES` (within the bounds; one image
    where the program takes one), decoder steps at one image with 3 rows, 6 cached and 2 new tokens."""
    t = TRACE_SIZES
    encoder = Sizes(min(t.images, bounds.images), min(t.rows, bounds.text_rows), min(t.tokens, bounds.tokens), 0, 1)
    many, single = example_inputs(model, graphs, encoder), example_inputs(model, graphs, replace(encoder, images=1))
    decoder = decoder_inputs(model, graphs, Sizes(1, min(3, bounds.beams), min(t.tokens, bounds.tokens), min(t.past, bounds.decoder_tokens - 2), 2))
    out = {}
    for name, graph in graphs.items():
        example = decoder[name] if graph.spec.kind in (STEP, SCORE) else single[name] if one_image(graph.spec) else many[name]
        with torch.no_grad():
            outputs = tuple(graph(*example))
        out[name] = Recipe(graph.spec, example, outputs, axis_names(graph.spec), bounds.ranges(graph.spec))
    return out


def decoder_inputs(model, graphs: dict[str, Graph], size: Sizes, seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs of the decoder step/score graphs for one image (question) with `size.rows` rows (from
    `onnx.example_inputs`, whose decoder rows are 1 + rows // images, cut to `size.rows`)."""
    found = example_inputs(model, graphs, replace(size, images=1, rows=max(1, size.rows - 1)), seed=seed)
    out = {}
    for name, graph in graphs.items():
        if graph.spec.kind in (STEP, SCORE):
            ids, atts, cache_k, cache_v, cross_k, cross_v, cross_atts = found[name]
            r = size.rows
            out[name] = (ids[:r], atts[:r], cache_k[:, :r].clone(), cache_v[:, :r].clone(), cross_k, cross_v, cross_atts[:r])
    return out


def check_cases(model, graphs: dict[str, Graph], bounds: Bounds) -> dict[str, list[tuple[Sizes, dict]]]:
    """The parity cases, none at a traced size, by `case_kind`. One at the bounds, where the planned memory is
    full; decoders also at an empty cache and at a whole prefix of `decoder_tokens` (the uncached reference
    decoder's call)."""
    b = bounds
    encoder = (Sizes(1, 1, 3, 0, 1), Sizes(min(3, b.images), 2, min(7, b.tokens), 0, 1), Sizes(b.images, b.text_rows, b.tokens, 0, 1))
    single = tuple(replace(s, images=1) for s in encoder)
    decoder = (
        Sizes(1, 1, 3, 0, 4),
        Sizes(1, min(3, b.beams), min(7, b.tokens), min(6, b.decoder_tokens - 1), 1),
        Sizes(1, b.beams, b.tokens, b.decoder_tokens - 1, 1),
        Sizes(1, 2, 5, 0, b.decoder_tokens),
    )
    return {
        "encoder": [(s, example_inputs(model, graphs, s, seed=100 + i)) for i, s in enumerate(encoder)],
        "one_image": [(s, example_inputs(model, graphs, s, seed=300 + i)) for i, s in enumerate(single)],
        "decoder": [(s, decoder_inputs(model, graphs, s, seed=200 + i)) for i, s in enumerate(decoder)],
    }


def case_kind(spec: GraphSpec) -> str:
    """Which of `check_cases` a program is checked on."""
    return "decoder" if spec.kind in (STEP, SCORE) else "one_image" if one_image(spec) else "encoder"


@dataclass
class Lowered:
    """A lowered program: its bytes, its method's planned arena and how many int8 weights it has."""

    buffer: bytes
    arena: int
    int8_weights: int = 0


def lower(graph: Graph, recipe: Recipe, *, int8_exclude: Sequence[str] | None = None) -> Lowered:
    """`torch.export` the graph with its Dims, optionally quantise it (XNNPACK, dynamic per-channel int8, modules
    whose name has an `int8_exclude` substring left float), lower it to XNNPACK and plan its memory."""
    require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackDynamicallyQuantizedPartitioner, XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    shapes = recipe.dynamic_shapes()
    int8_weights = 0
    with warnings.catch_warnings():
        # torch 2.13 and executorch 1.5.1 warn from their own internals on every export and lowering
        # (pytree LeafSpec FutureWarnings, deprecated registrations); the parity check proves the program.
        warnings.simplefilter("ignore")
        program = torch.export.export(graph, recipe.example, dynamic_shapes=shapes, strict=False)
        if int8_exclude is not None:
            module = _quantized(program.module(), recipe.example, int8_exclude)
            int8_weights = sum(1 for n in module.graph.nodes if n.target == torch.ops.quantized_decomposed.dequantize_per_channel.default)
            program = torch.export.export(module, recipe.example, dynamic_shapes=shapes, strict=False)
        # The quantised linears first, each in a partition of its own: one partitioner over both precisions
        # made a dependency cycle of the fusion graph's (the partition of a choose_qparams fed itself).
        partitioners = [XnnpackPartitioner()] if int8_exclude is None else [XnnpackDynamicallyQuantizedPartitioner(), XnnpackPartitioner()]
        manager = to_edge_transform_and_lower(program, partitioner=partitioners).to_executorch()
    plan = manager.executorch_program.execution_plan[0]
    return Lowered(manager.buffer, int(sum(plan.non_const_buffer_sizes)), int8_weights)


def _quantized(module: torch.fx.GraphModule, example: tuple[torch.Tensor, ...], exclude: Sequence[str]) -> torch.fx.GraphModule:
    """PT2E with XNNPACK's quantizer: symmetric per-channel int8 weights, activations quantised per call."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    def quantize(node: torch.fx.Node) -> bool:
        stack = node.meta.get("nn_module_stack", {})
        return not any(part in path for path, _ in stack.values() for part in exclude)

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    quantizer.set_filter_function(quantize)
    prepared = prepare_pt2e(module, quantizer)
    prepared(*example)  # dynamic activations need no calibration; one call sets the placeholder observers up
    return convert_pt2e(prepared)


# -- the fp32 export --------------------------------------------------------------------------------------


def executorch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:
        return "unknown"


def export_fp32(checkpoint, model_dir: Path, into: Path, bounds: Bounds, threads: int | None = None) -> ExportManifest:
    """The checked fp32 programs in `into` (copied from an fp32 executorch export of the same weights, bounds
    and executorch when there is one: lowering costs minutes) and the manifest describing them."""
    from xvlm_edge.cpu import cpu_flags, cpu_name
    from xvlm_edge.files import sha256_file
    from xvlm_edge.manifest import WEIGHTS_FILE

    require_executorch()
    if threads is not None:
        set_threads(threads)
    weights = sha256_file(model_dir / WEIGHTS_FILE)
    manifest = _reuse(export_dir(model_dir, TARGET, "fp32"), weights, bounds, into)
    if manifest is not None:
        return manifest
    model = checkpoint.model.eval().float()
    graphs = build_graphs(model)
    found = recipes(model, graphs, bounds)
    cases = check_cases(model, graphs, bounds)
    entries, parity = {}, {}
    for name, graph in graphs.items():
        lowered = lower(graph, found[name])
        path = into / f"{name}.pte"
        path.write_bytes(lowered.buffer)
        entries[name] = found[name].graph_file(path, lowered.arena, "float32", 0)
        kind_cases = cases[case_kind(graph.spec)]
        parity[name] = check_parity(
            name, PteMethod(path, entries[name]), graphs, kind_cases, FP32_ATOL, "ExecuTorch export",
            "this is an exporter bug for this graph; report it with the model config and the bounds",
        )  # fmt: skip
        log.info("exported %s: arena %.2f MiB, max |et - torch| %.2e over %d sizes", name, lowered.arena / 2**20, parity[name]["max_abs"], len(kind_cases))
    return ExportManifest(
        target=TARGET,
        precision="fp32",
        weights_sha256=weights,
        config=json.loads(json.dumps(checkpoint.config.to_dict())),  # as read back: lists, not tuples
        graphs=entries,
        decoders=decoder_shapes(graphs),
        exporter=f"torch.export (non-strict) + to_edge_transform_and_lower(XnnpackPartitioner), torch {torch.__version__}",
        executorch=executorch_version(),
        machine=platform.machine(),
        cpu=cpu_name(),
        cpu_flags=list(cpu_flags()),
        parity={"fp32_vs_torch": parity},
        accuracy={"reference": "torch fp32", "note": "fp32 export: see parity"},
        bounds=bounds_record(bounds),
    )


def bounds_record(bounds: Bounds) -> dict[str, Any]:
    """The manifest's `bounds`: the limits, and what the programs make of them."""
    return {
        "limits": asdict(bounds),
        "decoder_images": 1,  # step/score programs read one image's (question's) cross K/V; B images are B calls
        "one_image_programs": ["vision", CROSS_KV],  # take exactly one image (question); B images are B calls
        "planned_total": bounds.decoder_tokens * 2 - 1,  # past.max + new.max: what `total` is planned for
        "cut_by_runtime": ["images", "rows"],  # axes a call past the bound is cut along; others are refused
    }


def _reuse(directory: Path, weights_sha: str, bounds: Bounds, into: Path) -> ExportManifest | None:
    """Copy a checked fp32 executorch export of the same weights, bounds (and what the programs make of them)
    and executorch into `into`."""
    same = (TARGET, "fp32", weights_sha, executorch_version(), bounds_record(bounds))
    manifest = copy_reusable(directory, into, lambda m: (m.target, m.precision, m.weights_sha256, m.executorch, m.bounds) == same)
    return None if manifest is None else replace(manifest, assets={})


def write_assets(model_dir: Path, into: Path) -> dict[str, dict[str, str]]:
    """Copy the vocabulary, config (and answer list) beside the programs; the manifest's `assets`."""
    from xvlm_edge.files import sha256_file

    assets = {}
    for key, name in ASSETS.items():
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, into / name)
            assets[key] = {"file": name, "sha256": sha256_file(into / name)}
    return assets


# -- INT8: the plan search's target ------------------------------------------------------------------------


class ExecuTorchTarget(QuantTarget):
    """`int8.PlanSearch`'s target for executorch: dynamic INT8 (XNNPACK) or float per graph, whole graphs (no
    per-MatMul search), the candidate run by `ExecuTorchRuntime`. A quantised program is lowered once per graph
    and copied for the trial and the final file."""

    suffix = ".pte"
    descriptions: ClassVar[dict[str, str]] = {
        **DESCRIPTIONS,
        DYNAMIC: "XNNPACK dynamic int8 (symmetric per-channel int8 Linear/Conv weights, activation ranges per call)",
    }

    def __init__(
        self,
        checkpoint,
        fp32_dir: Path,
        out_dir: Path,
        work: Path,
        bounds: Bounds,
        exclude: Sequence[str],
        fp32_manifest: ExportManifest,
        threads: int | None,
    ) -> None:
        self.fp32_dir, self.out_dir, self.work, self.exclude = fp32_dir, out_dir, work, tuple(exclude)
        self.fp32_manifest, self.threads = fp32_manifest, threads
        self.graphs = build_graphs(checkpoint.model.eval().float())
        self.recipes = recipes(checkpoint.model, self.graphs, bounds)
        self._lowered: dict[str, tuple[Path, Lowered]] = {}

    def options(self, name: str) -> tuple[str, ...]:
        return graph_options(name, TARGET)

    def weight_bytes(self, name: str) -> int:
        return self.fp32_manifest.graphs[name].bytes

    def write(self, name: str, plan: GraphPlan, dst: Path) -> None:
        if plan.option == FLOAT:
            shutil.copyfile(self.fp32_dir / f"{name}.pte", dst)
            return
        if plan.option != DYNAMIC:
            raise InputError(f"the executorch target quantises {self.options(name)}, not {plan.option!r}")
        if name not in self._lowered:
            lowered = lower(self.graphs[name], self.recipes[name], int8_exclude=self.exclude)
            path = self.work / f"{name}.int8.pte"
            path.write_bytes(lowered.buffer)
            self._lowered[name] = (path, replace(lowered, buffer=b""))
        shutil.copyfile(self._lowered[name][0], dst)

    def runtime(self, files: dict[str, Path]) -> Runtime:
        from xvlm_edge.runtime.executorch_backend import ExecuTorchRuntime

        return ExecuTorchRuntime(self.out_dir, manifest=self.candidate_manifest(files), threads=self.threads)

    def graph_file(self, name: str, plan: GraphPlan) -> GraphFile:
        """The manifest entry of the chosen file `out_dir/<name>.pte`."""
        path = self.out_dir / f"{name}.pte"
        if plan.option == FLOAT:
            arena, weights = self.fp32_manifest.graphs[name].arena_bytes, 0
        else:
            lowered = self._lowered[name][1]
            arena, weights = lowered.arena, lowered.int8_weights
        return self.recipes[name].graph_file(path, arena, plan.describe(self.descriptions), weights)


__all__ = [
    "ASSETS",
    "TARGET",
    "Bounds",
    "ExecuTorchTarget",
    "Lowered",
    "Recipe",
    "axis_names",
    "bounds_record",
    "case_kind",
    "check_cases",
    "decoder_inputs",
    "export_fp32",
    "lower",
    "one_image",
    "recipes",
    "write_assets",
]
