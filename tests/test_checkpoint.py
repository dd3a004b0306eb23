"""Our checkpoint format, the official converters' round trip, and refusal of bad checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import torch

import xvlm_edge
from xvlm_edge.checkpoint import (
    Checkpoint,
    convert_official,
    detect_layout,
    infer_config,
    interpolate_relative_position_table,
    load_directory,
    ours_to_official,
    read_official,
    remap,
    save,
)
from xvlm_edge.config import LAYOUT_HEADS, ModelConfig, get_preset
from xvlm_edge.errors import CheckpointError
from xvlm_edge.models.swin import sincos_position_embedding
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.tokenizer import Tokenizer

OFFICIAL = ["swin_pretrain", "swin_retrieval", "swin_bbox", "swin_captioning", "swin_vqa", "swin_nlvr", "clip_pretrain", "clip_retrieval"]


@pytest.fixture(scope="module")
def tiny() -> Checkpoint:
    torch.manual_seed(0)
    config = get_preset("tiny", LAYOUT_HEADS["retrieval"])
    return Checkpoint(XVLM(config).eval(), Tokenizer.default(), config)


@torch.no_grad()
def test_directory_round_trip(tiny: Checkpoint, tmp_path: Path) -> None:
    out = save(tiny, tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    loaded = xvlm_edge.load(out)
    assert loaded.config == tiny.config
    pixels = torch.randn(2, 3, tiny.config.vision.image_res, tiny.config.vision.image_res)
    assert torch.equal(loaded.model.encode_image(pixels), tiny.model.encode_image(pixels))
    assert loaded.tokenizer.encode(["a red circle"]).input_ids.tolist() == tiny.tokenizer.encode(["a red circle"]).input_ids.tolist()


def test_save_replaces_atomically(tiny: Checkpoint, tmp_path: Path) -> None:
    target = tmp_path / "model"
    save(tiny, target)
    save(tiny, target)  # overwriting leaves exactly one complete checkpoint and no temp dirs
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_config_json_round_trip_and_unknown_key(tmp_path: Path) -> None:
    for name in ("xvlm-base-4m-224", "xvlm-base-16m-384", "clip-vit-b16", "tiny"):
        config = get_preset(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    data = get_preset("tiny").to_dict()
    data["text"]["hiden_size"] = 3
    with pytest.raises(CheckpointError, match="hiden_size"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_round_trip(reference_dir: Path, name: str) -> None:
    """official -> ours -> official gives back every official tensor bit for bit."""
    path = reference_dir / "checkpoints" / f"{name}.th"
    official, _ = read_official(path)
    converted = convert_official(path)
    back = ours_to_official(converted.model, converted.report.layout)
    assert set(back) == set(official)
    for key, value in official.items():
        assert torch.equal(back[key].to(value.dtype), value), key


@torch.no_grad()
def test_converted_directory_reproduces_official_model(reference_dir: Path, tmp_path: Path) -> None:
    converted = convert_official(reference_dir / "checkpoints/swin_retrieval.th")
    reloaded = xvlm_edge.load(save(converted, tmp_path / "retrieval"))
    pixels = torch.randn(2, 3, converted.config.vision.image_res, converted.config.vision.image_res)
    assert torch.equal(reloaded.model.encode_image(pixels), converted.model.encode_image(pixels))
    assert len(reloaded.tokenizer) == len(converted.tokenizer)


def test_relative_position_table_identity_when_window_unchanged() -> None:
    table = torch.randn(49, 3)
    assert interpolate_relative_position_table(table, 49) is table


def test_relative_position_table_exact_on_source_grid() -> None:
    """An interpolating spline (s=0) passes through its samples: the centre offset keeps its value."""
    table = torch.randn(7 * 7, 2)
    resized = interpolate_relative_position_table(table, 11 * 11)
    assert resized.shape == (121, 2)
    assert torch.allclose(resized.view(11, 11, 2)[5, 5], table.view(7, 7, 2)[3, 3], atol=1e-6)


# -- bad checkpoints: each refused with a message that names the problem --------------------------------


def test_wrong_layout_refused(tmp_path: Path) -> None:
    path = tmp_path / "timm_swin.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(4, 3, 4, 4), "head.weight": torch.zeros(10, 4)}}, path)
    with pytest.raises(CheckpointError, match="not an X-VLM checkpoint"):
        convert_official(path)
    with pytest.raises(CheckpointError, match="unknown X-VLM layout"):
        detect_layout({"vision_encoder.norm.weight": torch.zeros(2), "text_encoder.embeddings.x": torch.zeros(1)})


def test_truncated_checkpoint_refused(reference_dir: Path, tmp_path: Path) -> None:
    data = (reference_dir / "checkpoints/swin_bbox.th").read_bytes()
    path = tmp_path / "truncated.th"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        convert_official(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PAYLOAD_RAN",))


def test_pickle_with_code_payload_refused_and_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.th"
    torch.save({"model": {"vision_encoder.x": torch.zeros(1)}, "config": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        convert_official(path)
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_missing_file_and_not_a_dict(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        convert_official(tmp_path / "absent.th")
    path = tmp_path / "list.th"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        convert_official(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        xvlm_edge.load(tmp_path / "nowhere")


def test_directory_missing_vocab_or_corrupt_weights(tiny: Checkpoint, tmp_path: Path) -> None:
    out = save(tiny, tmp_path / "model")
    (out / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match="vocab.txt is missing"):
        load_directory(out)
    out = save(tiny, tmp_path / "model")
    (out / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_directory(out)


def test_directory_weights_not_matching_config(tiny: Checkpoint, tmp_path: Path) -> None:
    out = save(tiny, tmp_path / "model")
    config = json.loads((out / "config.json").read_text())
    config["heads"] = ["itc", "itm", "bbox"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match config.json"):
        load_directory(out)


def test_official_vocab_size_mismatch(reference_dir: Path, tmp_path: Path) -> None:
    """The fixture's tiny-vocab model with the 30522-token default vocab must be refused, not misread."""
    Tokenizer.default().save(tmp_path / "vocab.txt")
    with pytest.raises(CheckpointError, match="vocabulary has 30522 tokens"):
        convert_official(reference_dir / "checkpoints/swin_bbox.th", vocab=tmp_path / "vocab.txt")


def test_convert_without_its_jsons_is_refused_with_the_fix(reference_dir: Path) -> None:
    """Without the yaml's jsons the head counts are guessed as width // 64: 0 for the fixture's 32-wide text
    encoder. That is refused, naming the field and the fix, instead of writing a model with 0 heads."""
    with pytest.raises(CheckpointError, match=r"text\.num_heads must be a positive integer, got 0.*not found") as info:
        convert_official(reference_dir / "checkpoints/swin_bbox.th", config_root=Path("/nonexistent"))
    assert "config_root" in info.value.hint


def test_one_model_carries_every_head(reference_dir: Path) -> None:
    """Our multi-task model: a pretrain checkpoint seeds both decoders and keeps its encoder heads."""
    source = convert_official(reference_dir / "checkpoints/swin_pretrain.th")
    target = source.config.with_heads((*LAYOUT_HEADS["pretrain"], "caption", "vqa"))
    converted = convert_official(reference_dir / "checkpoints/swin_pretrain.th", target=target)
    assert converted.report.unexpected == []
    # Only the answer decoder's cross K/V are new when image and text widths differ (the official VQA rule).
    assert all(re.search(r"answer_decoder\.bert\.encoder\.layer\.\d+\.crossattention\.self\.(key|value)", k) for k in converted.report.missing)
    state = converted.model.state_dict()
    for key, value in source.model.state_dict().items():
        assert torch.equal(state[key], value), key
    query = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(state[f"caption_decoder.bert.{query}"], state[f"text_encoder.{query}"])


def test_swin_ape_code_and_detection() -> None:
    """Swin's optional absolute position embedding: a distinct sine-cosine code per patch, used by the forward,
    detected from an official-layout state and carried by config.json; the other presets do not have it."""
    assert get_preset("tiny").vision.ape and not get_preset("xvlm-base-16m-384").vision.ape
    code = sincos_position_embedding(8, 16)
    assert code.shape == (64, 16)
    assert len({tuple(row.tolist()) for row in code}) == 64  # every patch tells where it is
    assert torch.equal(code[:8, :8], code[:1, :8].expand(8, 8))  # the first half encodes the row only
    torch.manual_seed(0)
    config = get_preset("tiny", LAYOUT_HEADS["pretrain"])
    model = XVLM(config).eval()
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = model.encode_image(pixels)
        model.vision_encoder.absolute_pos_embed.zero_()
        assert not torch.allclose(model.encode_image(pixels), before)
    official = ours_to_official(model, "pretrain")
    assert infer_config(official, "pretrain", {"image_res": 128}).vision.ape
    del official["vision_encoder.absolute_pos_embed"]
    assert not infer_config(official, "pretrain", {"image_res": 128}).vision.ape


def test_swin_ape_follows_a_new_resolution() -> None:
    """Remapping to another image size resamples the `ape` grid like CLIP's position embedding."""
    source = get_preset("tiny")
    target = dataclasses.replace(source, vision=dataclasses.replace(source.vision, image_res=192))
    state = {"vision_encoder.absolute_pos_embed": sincos_position_embedding(32, 32)[None]}
    remapped, transformed = remap(state, source, target)
    assert transformed == ["vision_encoder.absolute_pos_embed"]
    assert remapped["vision_encoder.absolute_pos_embed"].shape == (1, 48 * 48, 32)
