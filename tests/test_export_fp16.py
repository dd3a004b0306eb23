"""fp16 export for TensorRT: a float16 ONNX per graph, checked against torch fp32 with ONNX Runtime CPU.

Bound: `FP16_TOL` (1e-2) of each output's scale, max |ort - torch| <= 1e-2 * max(1, max |torch|), the export's
own bound. fp16 keeps 11 significant bits; the tiny models measure about 1e-3 of scale (export/fp16.py), so
the bound fails on a real defect (an overflow, a wrong cast) and not on rounding.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_onnxruntime_backend import make_checkpoint

from xvlm_edge.cli import main
from xvlm_edge.config import LAYOUT_HEADS
from xvlm_edge.errors import BackendUnavailableError
from xvlm_edge.export import PRECISIONS, export_model
from xvlm_edge.export import fp16 as fp16_export
from xvlm_edge.export.fp16 import FLOAT32_OPS, FP16_TOL, check_fp16
from xvlm_edge.export.onnx import CHECK_SIZES, Sizes, example_inputs, run_both
from xvlm_edge.graphs import build_graphs
from xvlm_edge.manifest import ExportManifest, export_dir
from xvlm_edge.runtime.onnxruntime_backend import ort_session

#: Two batch sizes (images 1 and 5) the export was neither traced nor checked at.
FRESH_SIZES = (Sizes(images=1, rows=2, tokens=6, past=0, new=2), Sizes(images=5, rows=5, tokens=8, past=3, new=1))
#: Graph inputs that are ids, masks or indices: they stay integer in the fp16 graph.
INTEGER_INPUTS = {"text_ids", "text_atts", "image_index", "image_atts", "left_index", "right_index", "cross_index", "cross_atts", "self_atts"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def caption_dir(tmp_path_factory) -> Path:
    """A captioning checkpoint (vision + decoder graphs with fp16 caches) exported fp16 for TensorRT."""
    directory = make_checkpoint(tmp_path_factory.mktemp("fp16") / "captioning", LAYOUT_HEADS["captioning"])
    manifest = export_model(directory, "fp16", "tensorrt", threads=1)
    written = json.loads(json.dumps(asdict(manifest)))  # the file is its JSON
    assert asdict(ExportManifest.read(export_dir(directory, "tensorrt", "fp16"))) == written
    return directory


def test_weights_activations_and_io_are_fp16(caption_dir: Path) -> None:
    root = caption_dir / "export" / "tensorrt-fp16"
    manifest = ExportManifest.read(root)  # verifies every hash
    assert set(manifest.graphs) == {"vision", "caption_cross_kv", "caption_step", "caption_score"}
    for name in manifest.graphs:
        model = onnx.load(str(root / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)  # typed and topologically sorted
        graph = model.graph
        float32_consumers = {i for n in graph.node if n.op_type in FLOAT32_OPS for i in n.input}
        for t in graph.initializer:
            if t.data_type == TensorProto.FLOAT:  # only LayerNorm's scale and bias may stay fp32
                assert t.name in float32_consumers, (name, t.name)
        weights = {t.name: t.data_type for t in graph.initializer}
        matmul_weights = [weights[n.input[1]] for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1] in weights]
        assert matmul_weights and set(matmul_weights) == {TensorProto.FLOAT16}, name
        for value in (*graph.input, *graph.output):
            expected = TensorProto.INT64 if value.name in INTEGER_INPUTS else TensorProto.FLOAT16
            assert value.type.tensor_type.elem_type == expected, (name, value.name)
        ops = [n.op_type for n in graph.node]
        if "LayerNormalization" in ops:  # kept fp32 between Casts
            casts = [n for n in graph.node if n.op_type == "Cast"]
            assert {a.i for c in casts for a in c.attribute if a.name == "to"} >= {TensorProto.FLOAT, TensorProto.FLOAT16}


def test_manifest_records_parity_per_graph(caption_dir: Path) -> None:
    manifest = ExportManifest.read(caption_dir / "export" / "tensorrt-fp16")
    assert manifest.precision == "fp16" and manifest.target == "tensorrt"
    assert manifest.quantization["float32_ops"] == list(FLOAT32_OPS)
    fp16 = manifest.parity["fp16_vs_torch"]
    assert set(fp16) == set(manifest.graphs) == set(manifest.parity["fp32_vs_torch"])
    for name, record in fp16.items():
        assert record["checked"] and record["tol"] == FP16_TOL and len(record["cases"]) == len(CHECK_SIZES)
        assert record["max_abs"] > 0 and all(c["max_abs_over_scale"] <= FP16_TOL for c in record["cases"]), name
        assert "MatMul" in record["ort_cpu_fp32_ops"]  # ORT CPU has no fp16 MatMul here: it upcasts
        assert manifest.graphs[name].quantization.startswith("float16")


def test_parity_with_torch_fp32_at_two_batch_sizes(caption_dir: Path) -> None:
    """Independently of the export's check: every output within the bound at images 1 and 5."""
    from xvlm_edge.checkpoint import load_directory

    model = load_directory(caption_dir).model
    graphs = build_graphs(model)
    cases = [example_inputs(model, graphs, s, seed=11 + i) for i, s in enumerate(FRESH_SIZES)]
    for name in graphs:
        sess = ort_session(caption_dir / "export" / "tensorrt-fp16" / f"{name}.onnx", threads=1)
        assert {o.type for o in sess.get_outputs()} == {"tensor(float16)"}
        for inputs in cases:
            for output, got, ref in run_both(sess, graphs[name], inputs[name]):
                scale = max(1.0, float(np.abs(ref).max()))
                assert np.abs(got - ref).max() <= FP16_TOL * scale, (name, output, got.shape)


def test_graph_ort_cannot_run_is_recorded_not_failed(caption_dir: Path, monkeypatch) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import (
        NotImplemented as OrtNotImplemented,
    )

    def no_kernel(*args, **kwargs):
        raise OrtNotImplemented("Could not find an implementation for LayerNormalization(17) (float16)")

    monkeypatch.setattr(fp16_export, "ort_session", no_kernel)
    record = check_fp16("vision", caption_dir / "export" / "tensorrt-fp16" / "vision.onnx", {}, [])
    assert record["checked"] is False and "LayerNormalization" in record["reason"]


def test_onnxruntime_target_refuses_fp16_and_says_why(caption_dir: Path, capsys) -> None:
    assert "fp16" in PRECISIONS["tensorrt"] and "fp16" not in PRECISIONS["onnxruntime"]
    with pytest.raises(BackendUnavailableError, match="fp16 ONNX is for TensorRT"):
        export_model(caption_dir, "fp16", "onnxruntime")
    assert main(["export", str(caption_dir), "--precision", "fp16"]) == 2  # the precision the user typed
    assert "--target tensorrt" in capsys.readouterr().err


def test_cli_fp16(caption_dir: Path, capsys) -> None:
    assert main(["export", str(caption_dir), "--precision", "fp16", "--target", "tensorrt", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("exported 4 graphs (tensorrt, fp16)")
    *graphs, engines = lines[1:]
    assert len(graphs) == 4 and engines.strip().startswith("engines:")  # built here only with TensorRT compiled in
    assert all("fp16 max|ort - torch|" in line and "float16 (LayerNormalization in fp32)" in line for line in graphs)


def test_topological_sort_fixes_appended_nodes(tmp_path: Path) -> None:
    """The converter appends Casts after their consumers; the written graph must be in order."""
    nodes = [
        helper.make_node("Relu", ["x16"], ["y"], name="relu"),  # reads the Cast below
        helper.make_node("Cast", ["x"], ["x16"], name="cast", to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])]
    )
    fp16_export._sort_topologically(graph)
    assert [n.name for n in graph.node] == ["cast", "relu"]
    onnx.checker.check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), full_check=True)
