"""The `attend` box heads: the centre is a convex mix of patch centres, `attend_position` adds a phrase-chosen
direction to the scores, and every path exports both with parity."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from test_onnxruntime_backend import images

import xvlm_edge
from xvlm_edge.checkpoint import Checkpoint, load_directory, save
from xvlm_edge.config import PRESETS, ModelConfig, get_preset
from xvlm_edge.errors import CheckpointError
from xvlm_edge.export import export_model
from xvlm_edge.export.onnx import FP32_ATOL, Sizes, check_parity, example_inputs
from xvlm_edge.graphs import build_graphs
from xvlm_edge.models.box_head import patch_centres
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.runtime.onnxruntime_backend import ort_session
from xvlm_edge.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def attend_model(seed: int = 0, box_head: str = "attend") -> XVLM:
    torch.manual_seed(seed)
    model = XVLM(dataclasses.replace(get_preset("tiny", ("itm", "bbox")), box_head=box_head)).eval()
    for name, p in model.named_parameters():
        p.data.add_(torch.randn_like(p) * (5.0 if ".position." in name else 0.05))  # a direction that moves boxes
    return model


def test_patch_centres_are_row_major() -> None:
    centres = patch_centres(4)
    assert centres[0].tolist() == [0.125, 0.125] and centres[1].tolist() == [0.375, 0.125]
    assert centres[4].tolist() == [0.125, 0.375] and centres[-1].tolist() == [0.875, 0.875]


def test_one_visible_patch_is_the_centre() -> None:
    """Under a mask that leaves one patch, the attention has one place to go: the centre is that patch's."""
    model = attend_model()
    grid = model.config.vision.grid
    pixels = torch.randn(2, 3, model.config.vision.image_res, model.config.vision.image_res)
    ids = torch.randint(5, 100, (3, 6))
    atts = torch.ones(3, 6, dtype=torch.long)
    atts[2, 4:] = 0
    patch_atts = torch.zeros(3, 1 + grid * grid)
    chosen = [0, 17, grid * grid - 1]
    for row, patch in enumerate(chosen):
        patch_atts[row, 1 + patch] = 1
    with torch.no_grad():
        image = model.encode_image(pixels)
        context = model.image_context(image, patch_atts, torch.tensor([0, 1, 1]))
        cross = model.fuse(model.encode_text(ids, atts), atts, context)
        box = model.predict_bbox(cross, atts, context)
    torch.testing.assert_close(box[:, :2], patch_centres(grid)[chosen], rtol=0, atol=1e-6)
    assert ((box[:, 2:] > 0) & (box[:, 2:] < 1)).all()
    with pytest.raises(ValueError, match="text_atts and context"):
        model.predict_bbox(cross)


def test_the_query_reads_the_words() -> None:
    """Two phrases over one image point at different places: the box depends on more than the [CLS]."""
    model = attend_model(seed=3)
    pixels = torch.randn(1, 3, model.config.vision.image_res, model.config.vision.image_res)
    ids = torch.tensor([[1, 20, 30, 2], [1, 40, 50, 2]])
    atts = torch.ones_like(ids)
    with torch.no_grad():
        context = model.image_context(model.encode_image(pixels), index=torch.zeros(2, dtype=torch.long))
        box = model.predict_bbox(model.fuse(model.encode_text(ids, atts), atts, context), atts, context)
    assert (box[0] - box[1]).abs().max() > 1e-3


def test_the_centre_is_read_around_the_strongest_patch() -> None:
    """Attention leaked far from the strongest patch does not pull the centre; within its 3 x 3 neighbourhood
    the centre is the renormalised weighted mean of the patch centres."""
    model = attend_model()
    grid = model.config.vision.grid
    centres = patch_centres(grid)
    weights = torch.zeros(2, grid * grid)
    weights[0, 0], weights[0, grid * grid - 1] = 0.6, 0.4  # opposite corners: only the first counts
    weights[1, 9], weights[1, 10], weights[1, 3 * grid + 3] = 0.5, 0.3, 0.2  # (1,1), (1,2) near; (3,3) not
    phrase = torch.randn(2, model.config.text.hidden_size)
    patches = torch.randn(2, grid * grid, model.config.vision.width)
    with torch.no_grad():
        box = model.bbox_head.box(phrase, weights, patches)
    expected = torch.stack([centres[0], (0.5 * centres[9] + 0.3 * centres[10]) / 0.8])
    torch.testing.assert_close(box[:, :2], expected, rtol=0, atol=1e-6)


def test_a_zero_direction_is_the_attend_head() -> None:
    """`attend_position` starts where `attend` is (the grounding stage starts from stage 2's boxes exactly)."""
    plain = attend_model(seed=5)
    positioned = XVLM(dataclasses.replace(plain.config, box_head="attend_position")).eval()
    missing, unexpected = positioned.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["bbox_head.position.bias", "bbox_head.position.weight"] and not unexpected
    pixels = torch.randn(1, 3, plain.config.vision.image_res, plain.config.vision.image_res)
    ids = torch.tensor([[1, 20, 30, 2], [1, 40, 50, 2]])
    atts = torch.ones_like(ids)
    with torch.no_grad():
        boxes = []
        for model in (plain, positioned):
            context = model.image_context(model.encode_image(pixels), index=torch.zeros(2, dtype=torch.long))
            boxes.append(model.predict_bbox(model.fuse(model.encode_text(ids, atts), atts, context), atts, context))
    torch.testing.assert_close(boxes[0], boxes[1], rtol=0, atol=0)


def test_the_direction_picks_among_equal_matches() -> None:
    """Two patches the phrase matches equally: the direction decides between them, by the softmax of the match
    scores plus each patch's offset from the image centre along the direction."""
    head = attend_model(box_head="attend_position").bbox_head
    grid, width = int(head.centres.shape[0] ** 0.5), head.key.in_features
    patches = torch.zeros(1, grid * grid, width)
    left, right = grid + 1, 2 * grid - 2  # row 1: second and second-to-last columns
    phrase = torch.randn(1, head.query.in_features)
    with torch.no_grad():
        query = head.query(head.query_norm(phrase))[0]
        toward = head.key.weight.T @ query  # a patch along it scores higher than an empty one
        patches[0, [left, right]] = toward * 20 * query.shape[0] ** 0.5 / (toward @ toward)  # +20 over empty
        head.position.weight.zero_()
        chosen = {}
        for side, bias in (("left", -5.0), ("right", 5.0)):
            head.position.bias.copy_(torch.tensor([bias, 0.0]))
            weights = head.weigh(phrase, patches, torch.zeros(1, dtype=torch.long))
            match = (head.key(patches[0]) * query).sum(-1) / query.shape[-1] ** 0.5
            expected = (match + bias * (head.centres[:, 0] - 0.5)).softmax(-1)
            torch.testing.assert_close(weights[0], expected, rtol=1e-5, atol=1e-6)
            chosen[side] = int(weights.argmax())
    assert chosen == {"left": left, "right": right}


def test_config_names_the_head() -> None:
    with pytest.raises(CheckpointError, match="unknown box_head 'mlp'"):
        dataclasses.replace(get_preset("tiny"), box_head="mlp")
    config = dataclasses.replace(get_preset("tiny"), box_head="attend")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert all(get_preset(name).box_head == "cls" for name in PRESETS)  # official presets keep the official head


@pytest.fixture(scope="module", params=["attend", "attend_position"])
def attend_dir(tmp_path_factory, request) -> Path:
    model = attend_model(seed=1, box_head=request.param)
    directory = save(Checkpoint(model, Tokenizer.default(), model.config), tmp_path_factory.mktemp(request.param) / "model")
    export_model(directory, "fp32", threads=1)
    return directory


def test_onnx_parity(attend_dir: Path) -> None:
    model = load_directory(attend_dir).model
    assert model.config.box_head in ("attend", "attend_position")
    graphs = build_graphs(model)
    sizes = (Sizes(images=3, rows=4, tokens=9, past=0, new=1), Sizes(images=1, rows=2, tokens=3, past=0, new=1))
    cases = [(s, example_inputs(model, graphs, s, seed=11 + i)) for i, s in enumerate(sizes)]
    for name in graphs:
        session = ort_session(attend_dir / "export" / "onnxruntime-fp32" / f"{name}.onnx", threads=1)
        assert check_parity(name, session, graphs, cases, FP32_ATOL, "ONNX export", "")["max_abs"] <= FP32_ATOL, name


def test_served_ground_uses_the_head(attend_dir: Path) -> None:
    """`Model.ground` on torch and on the ONNX export agree on the boxes the attend head draws."""
    image = images(1, seed=4)[0]
    torch_boxes = xvlm_edge.load(attend_dir).ground(image, ["a red circle", "the blue star"])
    ort_boxes = xvlm_edge.load(attend_dir, backend="onnxruntime").ground(image, ["a red circle", "the blue star"])
    for a, b in zip(torch_boxes, ort_boxes):
        assert a.xyxy == pytest.approx(b.xyxy, abs=1e-3)


@pytest.mark.parametrize("box_head", ["attend", "attend_position"])
def test_executorch_ground_equals_torch(tmp_path: Path, box_head: str) -> None:
    """The lamp SDK's programs carry the head too: ExecuTorch boxes equal torch's."""
    pytest.importorskip("executorch")
    from test_export_executorch import ATOL, PHRASES, micro_checkpoint

    directory = micro_checkpoint(tmp_path / "model", ("itm", "bbox"), box_head=box_head)
    export_model(directory, "fp32", "executorch", threads=1)
    image = images(1, seed=2)[0]
    reference = xvlm_edge.load(directory, backend="torch", threads=1).ground(image, PHRASES)
    served = xvlm_edge.load(directory, backend="executorch", threads=1).ground(image, PHRASES)
    for r, g in zip(reference, served):
        assert r.cxcywh == pytest.approx(g.cxcywh, abs=ATOL)
