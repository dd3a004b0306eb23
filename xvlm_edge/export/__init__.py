"""Export: ONNX per graph with a torch parity check, INT8 Q/DQ with an accuracy gate, and the export manifest.

`export_model(MODEL_DIR, precision, target)` writes `MODEL_DIR/export/<target>-<precision>/`: one `<graph>.onnx`
per graph of the checkpoint and `manifest.json` (file sha256s, opset, I/O names and dynamic axes, the config,
the torch parity of the fp32 export and, for INT8, the accuracy gate's metrics against fp32). The directory
is built next to its final place and renamed over it only once every check passed, so a refused export
leaves the previous one (or nothing) behind.

Targets: `onnxruntime` (fp32, int8: QDQ vision + dynamic INT8 text/decoders) and `tensorrt` (the ONNX a
TensorRT engine is built from on the device: fp32; fp16, every graph converted to float16 (`fp16.py`), since
strongly typed networks take their precision from the ONNX types; or int8 with the QDQ vision graph and
float text/decoder graphs, since TensorRT does not run ORT's dynamic-quantisation ops). `onnxruntime` has no
fp16: its CPU provider has fp16 kernels for few ops and runs the rest (MatMul, Conv, Add...) in fp32 behind
Casts it inserts, so an fp16 graph there only adds rounding to the fp32 export.

INT8 can keep in float the MatMul/Gemm nodes a per-layer search finds sensitive (`search_sensitive=N`,
`sensitivity.py`); the nodes and the errors it measured go in the manifest (`sensitivity_search`).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xvlm_edge.errors import BackendUnavailableError, CheckpointError, InputError
from xvlm_edge.export.gate import AccuracyGateError, Thresholds

log = logging.getLogger(__name__)

TARGETS = ("onnxruntime", "tensorrt")
PRECISIONS = {"onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
#: Why a target refuses a precision, for the error message.
_REFUSED = {
    ("onnxruntime", "fp16"): "fp16 ONNX is for TensorRT (--target tensorrt): ONNX Runtime's CPU provider has fp16 "
    "kernels for few ops and runs the rest (MatMul, Conv, Add...) in fp32 behind Casts; use fp32 or int8 there",
}
#: Images calibrating the vision graph, and images of the gate's eval set (both synthetic unless given).
CALIBRATION_IMAGES = 32
EVAL_IMAGES = 8


def _images(source: str | Path | Sequence[np.ndarray] | None, count: int, seed: int) -> list[np.ndarray]:
    from xvlm_edge.export.quantize import folder_images, synthetic_images

    if source is None:
        return synthetic_images(count, seed=seed)
    if isinstance(source, (str, Path)):
        return folder_images(source, count)
    images = list(source)
    if not images:
        raise InputError("an empty image list was given for calibration or evaluation")
    return images


def export_model(
    model_dir: str | Path,
    precision: str = "fp32",
    target: str = "onnxruntime",
    *,
    calibration: str | Path | Sequence[np.ndarray] | None = None,
    eval_images: str | Path | Sequence[np.ndarray] | None = None,
    thresholds: Thresholds | None = None,
    force: bool = False,
    exclude: Sequence[str] | None = None,
    keep_fp32: Sequence[str] = (),
    search_sensitive: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export, check and (for int8) gate the checkpoint directory `model_dir`; returns the manifest written.

    `keep_fp32`: graphs an int8 export leaves in fp32 (a whole sensitive graph, e.g. the VQA path).
    `search_sensitive`: int8 only; per quantised graph, the most MatMul/Gemm nodes the sensitivity search
    may keep in float (0: no search). It costs one quantisation per candidate node.
    `threads`: ONNX Runtime threads of the parity check and the gate (None: ORT's default, every core).
    Raises EngineError when an fp32 graph differs from torch by more than 1e-4 at any checked size, or an
    fp16 graph by more than `fp16.FP16_TOL` of an output's scale, and AccuracyGateError when INT8 loses more
    than `thresholds` allow (unless `force`).
    """
    import onnxruntime
    import torch

    from xvlm_edge.api import Model
    from xvlm_edge.checkpoint import WEIGHTS_FILE, atomic_directory, load_directory
    from xvlm_edge.export import gate as gates
    from xvlm_edge.export.fp16 import FLOAT32_OPS, check_fp16, convert_to_fp16
    from xvlm_edge.export.onnx import OPSET, check_inputs, export_fp32, graph_axes
    from xvlm_edge.export.quantize import (
        DEFAULT_EXCLUDE,
        count_ops,
        qdq_violations,
        quantizable_nodes,
        to_pixels,
    )
    from xvlm_edge.export.sensitivity import search_sensitive_nodes
    from xvlm_edge.graphs import build_graphs, decoder_shape
    from xvlm_edge.runtime import create_runtime
    from xvlm_edge.runtime.onnxruntime_backend import (
        MANIFEST,
        OnnxRuntime,
        export_dir,
        sha256_file,
    )

    if target not in TARGETS:
        raise InputError(f"unknown export target {target!r}; choose one of {list(TARGETS)}")
    if precision not in PRECISIONS[target]:
        why = _REFUSED.get((target, precision))
        raise BackendUnavailableError(
            f"target {target} exports {list(PRECISIONS[target])}, not {precision!r}" + (f": {why}" if why else "")
        )
    if search_sensitive < 0 or (search_sensitive and precision != "int8"):
        raise InputError(f"search_sensitive={search_sensitive}: the sensitivity search takes a node budget >= 1, and only for int8")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a checkpoint directory", hint="convert first: xvlm-edge convert CKPT DIR")
    exclude = DEFAULT_EXCLUDE if exclude is None else tuple(exclude)
    checkpoint = load_directory(model_dir)
    model = checkpoint.model.eval()
    graphs = build_graphs(model)
    final = export_dir(model_dir, target, precision)
    with atomic_directory(final) as tmp:
        fp32_dir = tmp if precision == "fp32" else tmp / "fp32"
        fp32_dir.mkdir(exist_ok=True)
        weights_sha = sha256_file(model_dir / WEIGHTS_FILE)
        parity = _reuse_fp32(export_dir(model_dir, target, "fp32"), weights_sha, fp32_dir) if precision != "fp32" else None
        if parity is None:
            parity = export_fp32(model, fp32_dir, threads=threads)
        quantization = {name: "none" for name in graphs}
        parity_fp16: dict[str, dict] = {}
        sensitivity: dict[str, dict] = {}
        if precision == "fp16":
            cases = check_inputs(model, graphs)
            for name in graphs:
                convert_to_fp16(fp32_dir / f"{name}.onnx", tmp / f"{name}.onnx")
                parity_fp16[name] = check_fp16(name, tmp / f"{name}.onnx", graphs, cases, threads=threads)
                quantization[name] = f"float16 ({', '.join(FLOAT32_OPS)} in fp32)"
            shutil.rmtree(fp32_dir)
        if precision == "int8":
            unknown = set(keep_fp32) - set(graphs)
            if unknown:
                raise InputError(f"--keep-fp32 names graphs this checkpoint lacks: {sorted(unknown)} (has {sorted(graphs)})")
            pixels = to_pixels(_images(calibration, CALIBRATION_IMAGES, seed=0), model.config.vision.image_res)
            feeds = _search_feeds(model, graphs, eval_images) if search_sensitive else {}
            for name in graphs:
                src, dst = fp32_dir / f"{name}.onnx", tmp / f"{name}.onnx"
                quantizer = None if name in keep_fp32 else _quantizer(name, target, pixels, exclude)
                if quantizer is None:
                    shutil.copyfile(src, dst)
                    quantization[name] = "none (kept fp32)" if name in keep_fp32 else "none"
                    continue
                quantize, description = quantizer
                kept: list[str] = []
                if search_sensitive:
                    candidates = quantizable_nodes(src, constant_weight_only=name != "vision", exclude=exclude)
                    found = search_sensitive_nodes(src, quantize, feeds[name], candidates, search_sensitive, threads=threads)
                    sensitivity[name] = found.record()
                    kept = found.kept_float
                quantize(src, dst, kept)
                quantization[name] = description + (f"; {len(kept)} sensitive nodes kept float" if kept else "")
                violations = qdq_violations(dst)
                if violations:
                    raise AccuracyGateError({}, [f"{name}: {v}" for v in violations[:5]])
            shutil.rmtree(fp32_dir)
        entries = {}
        for name, graph in graphs.items():
            file = tmp / f"{name}.onnx"
            ops = count_ops(file)
            entries[name] = {
                "file": file.name,
                "sha256": sha256_file(file),
                "bytes": file.stat().st_size,
                "inputs": list(graph.INPUTS),
                "outputs": list(graph.OUTPUTS),
                "dynamic_axes": {k: {str(a): d for a, d in v.items()} for k, v in graph_axes(name, graph).items()},
                "quantization": quantization[name],
                "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
                "int8_matmuls": ops.get("MatMulInteger", 0),
            }
        decoders = {d: list(decoder_shape(graphs[f"{d}_step"].decoder)) for d in ("caption", "answer") if f"{d}_step" in graphs}
        manifest: dict[str, Any] = {
            "format": 1,
            "target": target,
            "precision": precision,
            "opset": OPSET,
            "exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}",
            "onnxruntime": onnxruntime.__version__,
            "machine": platform.machine(),
            "weights_sha256": weights_sha,
            "config": checkpoint.config.to_dict(),
            "graphs": entries,
            "decoders": decoders,
            "parity_fp32_vs_torch": parity,
            "accuracy": {"reference": "torch fp32", "note": "fp32 export: see parity_fp32_vs_torch"},
        }
        if precision == "fp16":
            manifest["parity_fp16_vs_torch"] = parity_fp16
            manifest["float32_ops"] = list(FLOAT32_OPS)
            manifest["accuracy"] = {"reference": "torch fp32", "note": "fp16 export: see parity_fp16_vs_torch (ONNX Runtime CPU)"}
        if target == "tensorrt":
            manifest["engines"] = "not built here: build them on the device from these ONNX files (xvlm_edge._C.EngineBuilder)"
        _write_manifest(tmp / MANIFEST, manifest)
        if precision == "int8":
            reference = Model(checkpoint, create_runtime(model, backend="torch", device="cpu"))
            candidate = Model(checkpoint, OnnxRuntime(tmp, threads=threads))
            metrics = gates.measure(reference, candidate, _images(eval_images, EVAL_IMAGES, seed=1))
            manifest["accuracy"] = {"reference": "torch fp32", **gates.gate(metrics, thresholds or Thresholds(), force)}
            manifest["exclude"] = list(exclude)
            manifest["keep_fp32"] = list(keep_fp32)
            if search_sensitive:
                manifest["sensitivity_search"] = sensitivity
            _write_manifest(tmp / MANIFEST, manifest)
    log.info("wrote %s", final)
    manifest["directory"] = str(final)
    return manifest


def _quantizer(name: str, target: str, pixels: np.ndarray, exclude: Sequence[str]):
    """(quantize(src, dst, keep_float), description) for graph `name` on `target`, or None when it stays float."""
    from xvlm_edge.export.quantize import quantize_dynamic_int8, quantize_static_qdq

    if name == "vision":
        return (
            lambda src, dst, keep: quantize_static_qdq(src, dst, pixels, exclude, keep),
            f"static QDQ int8 (MinMax, {len(pixels)} calibration images)",
        )
    if target == "onnxruntime":
        return lambda src, dst, keep: quantize_dynamic_int8(src, dst, exclude, keep), "dynamic int8 (constant-weight MatMuls)"
    return None  # TensorRT runs no dynamic-quantisation ops: text and decoder graphs stay float


def _search_feeds(model, graphs: dict, eval_images) -> dict[str, list[dict[str, np.ndarray]]]:
    """ONNX Runtime inputs the sensitivity search measures on, per graph: the eval images for the vision graph
    (the calibration images would flatter it), the export's example inputs at two checked sizes for the rest."""
    from xvlm_edge.export.onnx import CHECK_SIZES, check_inputs
    from xvlm_edge.export.quantize import to_pixels

    cases = check_inputs(model, graphs, CHECK_SIZES[1:])
    feeds = {name: [{n: x.numpy() for n, x in zip(graph.INPUTS, inputs[name])} for _, inputs in cases] for name, graph in graphs.items()}
    feeds["vision"] = [{"pixels": to_pixels(_images(eval_images, EVAL_IMAGES, seed=1), model.config.vision.image_res)}]
    return feeds


def _reuse_fp32(directory: Path, weights_sha: str, into: Path) -> dict | None:
    """Copy a checked fp32 export of the same weights and opset into `into`; its parity, or None when there is none.

    INT8 starts from the fp32 graphs; re-exporting them costs minutes at the base size. The files are
    verified against the manifest's hashes on the way (`read_manifest`).
    """
    from xvlm_edge.export.onnx import OPSET
    from xvlm_edge.runtime.onnxruntime_backend import MANIFEST, read_manifest

    if not (directory / MANIFEST).is_file():
        return None
    manifest = read_manifest(directory)
    if manifest.get("weights_sha256") != weights_sha or manifest.get("opset") != OPSET:
        return None
    for entry in manifest["graphs"].values():
        shutil.copyfile(directory / entry["file"], into / entry["file"])
    log.info("INT8 starts from the fp32 export in %s (same weights)", directory)
    return manifest["parity_fp32_vs_torch"]


def _write_manifest(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2))


__all__ = ["PRECISIONS", "TARGETS", "AccuracyGateError", "Thresholds", "export_model"]
