"""INT8 quantisation of exported graphs with onnxruntime.quantization: explicit Q/DQ, and what stays float.

- The vision graph is quantised statically in QDQ format (QuantizeLinear/DequantizeLinear pairs around the
  Conv/MatMul/Gemm inputs, per-channel int8 weights, uint8 activations with MinMax ranges from a calibration
  set). QDQ is the format both ONNX Runtime and TensorRT 10/11 consume.
- Text and decoder graphs are quantised dynamically (int8 weights, activation ranges computed per call):
  their activations depend on the text, and a cached decode step is bound by streaming its weights, which
  int8 shrinks 4x. Only MatMuls with a constant weight are quantised (`MatMulConstBOnly`): attention's
  activation x activation products stay float.
- Excluded everywhere (never quantised: only Conv/MatMul/Gemm are): residual Adds, LayerNorm, Softmax, GELU.
  `DedicatedQDQPair` gives each quantised consumer its own Q/DQ pair, so a tensor that feeds a MatMul and a
  residual Add reaches the Add unquantised; `qdq_violations` checks that on the written model.
- Sensitive layers excluded by default: the patch-embedding Conv (3 input channels, negligible compute, and
  it sees raw pixels). More can be excluded by node-name substring (`exclude`), or by exact node name
  (`keep_float`), which is how the nodes found by measuring (`sensitivity.py`) are kept in float.

`reduce_range` (7-bit weights) is on: this CPU has AVX2 without VNNI, where ONNX Runtime's u8s8 kernels use
VPMADDUBSW, whose int16 intermediate can saturate with full-range weights (onnxruntime quantization docs).

Trap seen here: ORT's quantisation pre-processing (symbolic shape inference) fails on the dynamic decoder
graphs, so `quant_pre_process` runs with `skip_symbolic_shape=True`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from xvlm_edge.errors import InputError

log = logging.getLogger(__name__)

#: Op types that carry INT8 math; everything else (Add, LayerNormalization, Softmax, Erf, ...) stays float.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
#: Op types whose inputs must never come out of a DequantizeLinear (the float islands of the QDQ graph).
FLOAT_OPS = ("LayerNormalization", "Softmax", "Add")
#: Node-name substrings excluded by default (sensitive layers, see the module docstring).
DEFAULT_EXCLUDE = ("patch_embed",)


# -- calibration and evaluation images ---------------------------------------------------------------------


def synthetic_images(count: int, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """`count` HWC uint8 RGB images of coloured rectangles, discs and gradients over a noisy background.

    Simple scenes with objects, edges and flat regions, so that activation ranges look like a photo's rather
    than noise's. Deterministic in `seed`. (The package never imports training/, whose generator is richer.)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3)
        direction = rng.uniform(-1, 1, 2)
        canvas = base + 80 * (direction[0] * xx + direction[1] * yy)[..., None]  # (H, W, 3) gradient
        canvas = canvas + rng.normal(0, 8, canvas.shape)
        for _ in range(int(rng.integers(2, 6))):
            colour = rng.uniform(0, 255, 3)
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
            if rng.random() < 0.5:
                inside = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.5, 1.5))
            else:
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            canvas[inside] = colour
        images.append(np.clip(canvas, 0, 255).astype(np.uint8))
    return images


def folder_images(folder: str | Path, limit: int) -> list[np.ndarray]:
    """Up to `limit` images of a folder (sorted), decoded as the tasks decode them."""
    from xvlm_edge.preprocess import load_image

    root = Path(folder)
    suffixes = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in suffixes) if root.is_dir() else []
    if not paths:
        raise InputError(f"calibration folder {root} holds no images ({', '.join(suffixes)})", hint="give a folder of photos")
    return [load_image(str(p)) for p in paths[:limit]]


def to_pixels(images: Sequence[np.ndarray], res: int) -> np.ndarray:
    """(count, 3, res, res) float32 pixel values, preprocessed exactly as the tasks do."""
    from xvlm_edge.preprocess import to_pixel_values

    return np.stack([to_pixel_values(a, res) for a in images]).astype(np.float32)


# -- quantisation --------------------------------------------------------------------------------------------


class _PixelReader:
    """onnxruntime CalibrationDataReader over a (count, 3, R, R) array, one image per batch."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter({"pixels": p[None]} for p in pixels)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _preprocess(src: Path, work: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / f"{src.stem}.pre.onnx"
    quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


def _nodes_matching(model_path: Path, patterns: Sequence[str]) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and any(p in n.name for p in patterns)]


def _nodes_to_exclude(pre: Path, exclude: Sequence[str], keep_float: Sequence[str]) -> list[str]:
    """Nodes matching the `exclude` substrings, plus the `keep_float` names (each must be a node of `pre`)."""
    import onnx

    names = {n.name for n in onnx.load(str(pre), load_external_data=False).graph.node}
    unknown = sorted(set(keep_float) - names)
    if unknown:
        raise InputError(f"nodes to keep in float are not in {pre.stem}: {unknown[:5]}", hint="take names from quantizable_nodes()")
    return sorted({*_nodes_matching(pre, exclude), *keep_float})


def quantizable_nodes(src: Path, *, constant_weight_only: bool, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> list[str]:
    """Names of the MatMul/Gemm nodes the quantiser would quantise in `src` (after its pre-processing), minus
    those matching `exclude`: the candidates of the sensitivity search.

    `constant_weight_only`: the dynamic quantiser's rule (`MatMulConstBOnly`), under which activation x
    activation products (attention scores) stay float anyway.
    """
    import onnx

    with tempfile.TemporaryDirectory() as work:
        graph = onnx.load(str(_preprocess(src, Path(work))), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm")
        and not any(p in n.name for p in exclude)
        and (not constant_weight_only or n.input[1] in constants)
    ]


def quantize_static_qdq(
    src: Path, dst: Path, pixels: np.ndarray, exclude: Sequence[str] = DEFAULT_EXCLUDE, keep_float: Sequence[str] = ()
) -> None:
    """Static QDQ INT8 of the vision graph, calibrated (MinMax) on `pixels` (count, 3, R, R).

    Nodes whose names contain an `exclude` substring, and the nodes named in `keep_float`, stay float."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with tempfile.TemporaryDirectory() as work:
        pre = _preprocess(src, Path(work))
        quantize_static(
            str(pre),
            str(dst),
            _PixelReader(pixels),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_nodes_to_exclude(pre, exclude, keep_float),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "DedicatedQDQPair": True,
                "ActivationSymmetric": False,
                # MatMul/Conv outputs stay float: their bias and residual Adds must not read dequantized tensors
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            },
        )


def quantize_dynamic_int8(src: Path, dst: Path, exclude: Sequence[str] = DEFAULT_EXCLUDE, keep_float: Sequence[str] = ()) -> None:
    """Dynamic INT8 (int8 weights, per-call activation ranges) of the constant-weight MatMuls of a graph.

    Nodes whose names contain an `exclude` substring, and the nodes named in `keep_float`, stay float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as work:
        pre = _preprocess(src, Path(work))
        quantize_dynamic(
            str(pre),
            str(dst),
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=False,
            reduce_range=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_nodes_to_exclude(pre, exclude, keep_float),
            extra_options={"MatMulConstBOnly": True},
        )


def qdq_violations(model_path: Path) -> list[str]:
    """Float-only nodes (LayerNorm, Softmax, Add) that read a dequantized tensor: empty when the exclusions hold.

    An Add reading a DequantizeLinear of a constant (a quantised bias) is not a violation; one reading a
    dequantized activation is (a residual or bias Add on the quantised path).
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    bad = []
    for node in graph.node:
        if node.op_type not in FLOAT_OPS:
            continue
        for name in node.input:
            src = producer.get(name)
            if src is not None and src.op_type == "DequantizeLinear" and src.input[0] not in initializers:
                bad.append(f"{node.op_type} {node.name} reads dequantized {name}")
    return bad


def count_ops(model_path: Path) -> dict[str, int]:
    """Node count per op type (QuantizeLinear / DequantizeLinear / MatMulInteger ... in the manifest)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


__all__ = [
    "DEFAULT_EXCLUDE",
    "count_ops",
    "folder_images",
    "qdq_violations",
    "quantizable_nodes",
    "quantize_dynamic_int8",
    "quantize_static_qdq",
    "synthetic_images",
    "to_pixels",
]
