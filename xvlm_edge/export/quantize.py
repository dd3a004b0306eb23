"""INT8 quantisation of exported graphs with onnxruntime.quantization: explicit Q/DQ, and what stays float.

- The vision graph is quantised statically in QDQ format (QuantizeLinear/DequantizeLinear pairs around the
  Conv/MatMul/Gemm inputs, per-channel int8 weights, uint8 activations with MinMax ranges from a calibration
  set). QDQ is the format both ONNX Runtime and TensorRT 10/11 consume.
- Every graph can be quantised dynamically (int8 weights, activation ranges computed per call): text
  activations depend on the text, and a cached decode step is bound by streaming its weights, which int8
  shrinks 4x. Only MatMuls with a constant weight are quantised (`MatMulConstBOnly`): attention's
  activation x activation products stay float. Measured at the base preset on a Xeon with AVX-512 VNNI
  (ONNX Runtime 1.32, 2 threads, denormals flushed): the dynamic vision graph is faster than the static QDQ
  one (258-275 vs 277-293 ms) and closer to fp32 (cosine 0.99982 vs 0.99976); per-channel weights cost the
  decoder step nothing measurable and cut its logits' error 3.1 % -> 1.7 % (argmax agreement 98 -> 100 %),
  so every graph uses them. The vision graph once stayed per-tensor (2 % faster at the base preset: 221 vs
  225 ms, min of 8, EPYC with AVX-512 VNNI); on the embedded model that cost the gate its captions (exact
  agreement with fp32 on 64 held-out scenes 0.9375 per-tensor, 0.984 per-channel), and the search then kept
  the whole vision graph in float.
- Excluded everywhere (never quantised: only Conv/MatMul/Gemm are): residual Adds, LayerNorm, Softmax, GELU.
  `DedicatedQDQPair` gives each quantised consumer its own Q/DQ pair, so a tensor that feeds a MatMul and a
  residual Add reaches the Add unquantised; `qdq_violations` checks that on the written model.
- Sensitive layers excluded by default: the patch-embedding Conv (3 input channels, negligible compute, and
  it sees raw pixels). More can be excluded by node-name substring (`exclude`), or by exact node name
  (`keep_float`), which is how the nodes found by measuring (`sensitivity.py`) are kept in float.

`reduce_range` (7-bit weights) follows the CPU the export runs on (`cpu.needs_reduced_range`), is recorded in
the manifest and can be overridden: x86 without VNNI needs it, since ONNX Runtime's u8s8 kernels there use
VPMADDUBSW, whose int16 intermediate saturates with full-range weights (onnxruntime quantization docs).

`GraphQuantizer` quantises one graph again and again (the INT8 plan search's trials) with what is costly
done once: ORT's pre-processing of the graph, and the static graph's calibration ranges (ORT's calibration
cache), so a trial costs one quantisation pass, not one calibration.

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
    from xvlm_edge.preprocess import IMAGE_SUFFIXES, load_image

    root = Path(folder)
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not paths:
        raise InputError(f"calibration folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})", hint="give a folder of photos")
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


def _preprocess(src: Path, out: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


def _quantizable(graph, exclude: Sequence[str], constant_weight_only: bool) -> list[str]:
    constants = {t.name for t in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm")
        and not any(p in n.name for p in exclude)
        and (not constant_weight_only or n.input[1] in constants)
    ]


def quantizable_nodes(src: Path, *, constant_weight_only: bool, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> list[str]:
    """Names of the MatMul/Gemm nodes the quantiser would quantise in `src` (after its pre-processing), minus
    those matching `exclude`: the candidates of the sensitivity search.

    `constant_weight_only`: the dynamic quantiser's rule (`MatMulConstBOnly`), under which activation x
    activation products (attention scores) stay float anyway.
    """
    import onnx

    with tempfile.TemporaryDirectory() as work:
        graph = onnx.load(str(_preprocess(src, Path(work) / "pre.onnx")), load_external_data=False).graph
    return _quantizable(graph, exclude, constant_weight_only)


class GraphQuantizer:
    """One fp32 graph, quantised on demand into any number of files: static QDQ (`static`, calibrated on
    `pixels`, the vision graph's input) or dynamic INT8 (`dynamic`), with named nodes kept in float.

    ORT's pre-processing runs once, into `work`; the first static quantisation calibrates and caches the
    ranges there, and every later one reuses them (keeping nodes in float does not change what is
    calibrated, only what is quantised).
    """

    def __init__(
        self,
        src: Path,
        work: Path,
        *,
        reduce_range: bool,
        per_channel: bool = True,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        pixels: np.ndarray | None = None,
    ) -> None:
        self.src, self.work = Path(src), Path(work)
        self.reduce_range, self.per_channel, self.exclude, self.pixels = reduce_range, per_channel, tuple(exclude), pixels
        self._pre: Path | None = None

    @property
    def pre(self) -> Path:
        """The pre-processed graph (made on first use)."""
        if self._pre is None:
            self.work.mkdir(parents=True, exist_ok=True)
            self._pre = _preprocess(self.src, self.work / f"{self.src.stem}.pre.onnx")
        return self._pre

    def candidates(self, *, constant_weight_only: bool) -> list[str]:
        """The MatMul/Gemm nodes a quantisation of this graph would quantise (see `quantizable_nodes`)."""
        import onnx

        graph = onnx.load(str(self.pre), load_external_data=False).graph
        return _quantizable(graph, self.exclude, constant_weight_only)

    def _excluded(self, keep_float: Sequence[str]) -> list[str]:
        """Nodes matching the `exclude` substrings, plus the `keep_float` names (each must be a node here)."""
        import onnx

        graph = onnx.load(str(self.pre), load_external_data=False).graph
        names = {n.name for n in graph.node}
        unknown = sorted(set(keep_float) - names)
        if unknown:
            raise InputError(f"nodes to keep in float are not in {self.src.stem}: {unknown[:5]}", hint="take names from quantizable_nodes()")
        matching = [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and any(p in n.name for p in self.exclude)]
        return sorted({*matching, *keep_float})

    def static(self, dst: Path, keep_float: Sequence[str] = ()) -> None:
        """Static QDQ INT8: per-channel int8 weights, uint8 activations with MinMax ranges from `pixels`."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if self.pixels is None:
            raise InputError(f"static quantisation of {self.src.stem} needs calibration inputs")
        quantize_static(
            str(self.pre),
            str(dst),
            _PixelReader(self.pixels),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            reduce_range=self.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=self._excluded(keep_float),
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(self.work / f"{self.src.stem}.calibration.json"),
            extra_options={
                "DedicatedQDQPair": True,
                "ActivationSymmetric": False,
                # MatMul/Conv outputs stay float: their bias and residual Adds must not read dequantized tensors
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            },
        )

    def dynamic(self, dst: Path, keep_float: Sequence[str] = ()) -> None:
        """Dynamic INT8 (int8 weights, per-call activation ranges) of the constant-weight MatMuls."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(self.pre),
            str(dst),
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=self._excluded(keep_float),
            extra_options={"MatMulConstBOnly": True},
        )


def quantize_dynamic_int8(
    src: Path,
    dst: Path,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    keep_float: Sequence[str] = (),
    *,
    reduce_range: bool | None = None,
    per_channel: bool = True,
) -> None:
    """Dynamic INT8 of one graph in one call (`GraphQuantizer.dynamic`); `reduce_range` None follows the CPU."""
    from xvlm_edge.cpu import needs_reduced_range

    with tempfile.TemporaryDirectory() as work:
        reduce = needs_reduced_range() if reduce_range is None else reduce_range
        GraphQuantizer(src, Path(work), reduce_range=reduce, per_channel=per_channel, exclude=exclude).dynamic(dst, keep_float)


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
    "GraphQuantizer",
    "count_ops",
    "folder_images",
    "qdq_violations",
    "quantizable_nodes",
    "quantize_dynamic_int8",
    "synthetic_images",
    "to_pixels",
]
