"""Parity with the official X-VLM implementation on the fixtures in $XVLM_REFERENCE_DIR.

Every dimension, index and text comes from the fixture directory itself, so any fixture set in the
same format (another seed, other sizes, a shuffled vocabulary) must pass. Tolerances follow the fixture
README section 7: 1e-5 absolute for states and heads, 1e-4 for logits scaled by 1/temp.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from xvlm_edge.checkpoint import (
    RENAMES,
    TIED,
    convert_official,
    detect_layout,
    official_to_ours,
    ours_to_official,
    read_official,
)
from xvlm_edge.config import LAYOUT_HEADS, get_preset
from xvlm_edge.models.bert import CrossContext
from xvlm_edge.models.xvlm import XVLM

ATOL = 1e-5
ATOL_TEMP_SCALED = 1e-4

SWIN_SECTIONS = ["swin_pretrain", "swin_retrieval", "swin_bbox", "swin_captioning", "swin_vqa", "swin_nlvr"]
CLIP_SECTIONS = ["clip_pretrain", "clip_retrieval"]


@pytest.fixture(scope="module")
def ref(reference_dir: Path) -> dict:
    load = lambda p: torch.load(reference_dir / p, map_location="cpu", weights_only=True)  # noqa: E731
    return {
        "dir": reference_dir,
        "inputs": load("inputs/inputs.pt"),
        "pixels": load("expected/preprocess.pt"),
        "load": load,
    }


def _role(section: str) -> str:
    return "swin" if section.startswith("swin") else section


def _model(ref: dict, section: str) -> XVLM:
    return convert_official(ref["dir"] / "checkpoints" / f"{section}.th").model


def _close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol}"


@pytest.mark.parametrize("section", ["swin_pretrain", "clip_pretrain"])
@torch.no_grad()
def test_pretrain_outputs(ref: dict, section: str) -> None:
    model, inp, expected = _model(ref, section), ref["inputs"], ref["load"](f"expected/{section}.pt")
    role = _role(section)
    pixels = ref["pixels"][f"pixel_values_{role}"]
    idx, atts = inp["regions_idx_to_group_img"], inp[f"regions_image_atts_{role}"]
    ids, text_atts = inp["pretrain_regions_text_ids"], inp["pretrain_regions_text_atts"]

    _close("vision_full", model.encode_image(pixels), expected["vision_full"])
    boxes, full = model.encode_boxes(pixels, idx, atts)
    _close("box_image_embeds", boxes, expected["box_image_embeds"])
    _close("box_image_embeds_fullatts", full[idx], expected["box_image_embeds_fullatts"])
    text = model.encode_text(ids, text_atts)
    _close("text_embeds", text, expected["text_embeds"])
    image_feat, text_feat = model.image_features(boxes), model.text_features(text)
    _close("image_feat", image_feat, expected["image_feat"])
    _close("text_feat", text_feat, expected["text_feat"])
    _close("itc_logits", image_feat @ text_feat.T / model.temp, expected["itc_logits"], ATOL_TEMP_SCALED)

    context = model.box_context(boxes, full, idx, atts)
    cross = model.fuse(text, text_atts, context)
    _close("cross_embeds", cross, expected["cross_embeds"])
    _close("itm_logits", model.itm_logits(cross), expected["itm_logits"])
    full_image = model.fuse(text, text_atts, model.image_context(full, index=idx))
    _close("predict_bbox", model.predict_bbox(full_image), expected["predict_bbox"])
    hidden = model.encode_multimodal(inp["pretrain_regions_text_ids_masked"], text_atts, context)
    _close("mlm_logits", model.mlm_logits(hidden, inp["pretrain_regions_masked_pos"]), expected["mlm_logits"])

    cap_ids, cap_atts = inp["pretrain_captions_text_ids"], inp["pretrain_captions_text_atts"]
    _close("image_step_text_embeds", model.encode_text(cap_ids, cap_atts), expected["image_step_text_embeds"])
    image_hidden = model.encode_multimodal(inp["pretrain_captions_text_ids_masked"], cap_atts, model.image_context(full))
    _close(
        "image_step_mlm_logits",
        model.mlm_logits(image_hidden, inp["pretrain_captions_masked_pos"]),
        expected["image_step_mlm_logits"],
    )


@pytest.mark.parametrize("section", ["swin_retrieval", "clip_retrieval"])
@torch.no_grad()
def test_retrieval_outputs(ref: dict, section: str) -> None:
    model, inp, expected = _model(ref, section), ref["inputs"], ref["load"](f"expected/{section}.pt")
    role = _role(section)
    pixels = ref["pixels"][f"pixel_values_{role}"]
    images = model.encode_image(pixels)
    _close("vision_full", images, expected["vision_full"])
    idx, atts = inp["regions_idx_to_group_img"], inp[f"regions_image_atts_{role}"]
    boxes, full = model.encode_boxes(pixels, idx, atts)
    _close("box_image_embeds", boxes, expected["box_image_embeds"])
    _close("box_image_embeds_fullatts", full[idx], expected["box_image_embeds_fullatts"])

    ids, text_atts = inp["captions_ids"], inp["captions_atts"]
    text = model.encode_text(ids, text_atts)
    _close("text_embeds", text, expected["text_embeds"])
    image_feat, text_feat = model.image_features(images), model.text_features(text)
    _close("image_feat", image_feat, expected["image_feat"])
    _close("text_feat", text_feat, expected["text_feat"])
    _close("sim_i2t", image_feat @ text_feat.T, expected["sim_i2t"])
    _close("itc_logits", image_feat @ text_feat.T / model.temp, expected["itc_logits"], ATOL_TEMP_SCALED)

    # Every (image, text) pair reads its image's K/V through the index: nothing is copied per pair.
    num_images, num_texts = len(images), len(text)
    pair_image = torch.arange(num_images).repeat_interleave(num_texts)
    cross = model.fuse(text.repeat(num_images, 1, 1), text_atts.repeat(num_images, 1), model.image_context(images, index=pair_image))
    _close("cross_embeds_all_pairs", cross.view(num_images, num_texts, *cross.shape[1:]), expected["cross_embeds_all_pairs"])
    _close("itm_logits_all_pairs", model.itm_logits(cross).view(num_images, num_texts, 2), expected["itm_logits_all_pairs"])

    region_ids, region_atts = inp["pretrain_regions_text_ids"], inp["pretrain_regions_text_atts"]
    region_cross = model.fuse(model.encode_text(region_ids, region_atts), region_atts, model.box_context(boxes, full, idx, atts))
    _close("itm_logits_boxes", model.itm_logits(region_cross), expected["itm_logits_boxes"])


@torch.no_grad()
def test_bbox_outputs(ref: dict) -> None:
    model, inp, expected = _model(ref, "swin_bbox"), ref["inputs"], ref["load"]("expected/swin_bbox.pt")
    images = model.encode_image(ref["pixels"]["pixel_values_swin"][inp["grounding_image_index"]])
    _close("vision_full", images, expected["vision_full"])
    text = model.encode_text(inp["grounding_ids"], inp["grounding_atts"])
    _close("text_embeds", text, expected["text_embeds"])
    cross = model.fuse(text, inp["grounding_atts"], model.image_context(images))
    _close("cross_embeds", cross, expected["cross_embeds"])
    _close("predict_bbox", model.predict_bbox(cross), expected["predict_bbox"])


@torch.no_grad()
def test_captioning_outputs(ref: dict) -> None:
    model, inp, expected = _model(ref, "swin_captioning"), ref["inputs"], ref["load"]("expected/swin_captioning.pt")
    images = model.encode_image(ref["pixels"]["pixel_values_swin"])
    _close("vision_full", images, expected["vision_full"])
    decoder = model.caption_decoder
    hidden, _ = decoder.bert(inp["captioning_tf_ids"], inp["captioning_tf_atts"], context=model.image_context(images), causal=True)
    _close("tf_logits", decoder.logits(hidden), expected["tf_logits"])


@torch.no_grad()
def test_vqa_outputs(ref: dict) -> None:
    model, inp, expected = _model(ref, "swin_vqa"), ref["inputs"], ref["load"]("expected/swin_vqa.pt")
    images = model.encode_image(ref["pixels"]["pixel_values_swin"][inp["vqa_image_index"]])
    _close("vision_full", images, expected["vision_full"])
    question_atts = inp["vqa_questions_atts"]
    states = model.encode_multimodal(inp["vqa_questions_ids"], question_atts, model.image_context(images))
    _close("question_states", states, expected["question_states"])
    start = inp["vqa_answers_ids"][:1, :1].expand(len(states), 1)  # the answers' [CLS] starts decoding
    hidden, _ = model.answer_decoder.bert(start, torch.ones_like(start), context=CrossContext(states, question_atts), causal=True)
    _close("start_logits", model.answer_decoder.logits(hidden)[:, 0], expected["start_logits"])


@torch.no_grad()
def test_nlvr_outputs(ref: dict) -> None:
    model, inp, expected = _model(ref, "swin_nlvr"), ref["inputs"], ref["load"]("expected/swin_nlvr.pt")
    pixels, pairs = ref["pixels"]["pixel_values_swin"], inp["nlvr_image_pairs"]
    images = model.encode_image(torch.cat([pixels[pairs[:, 0]], pixels[pairs[:, 1]]]))
    _close("vision_full", images, expected["vision_full"])
    left, right = model.image_context(images[: len(pairs)]), model.image_context(images[len(pairs) :])
    cross = model.encode_multimodal(inp["nlvr_ids"], inp["nlvr_atts"], [left, right])
    _close("cross_embeds", cross, expected["cross_embeds"])
    _close("cls_logits", model.cls_head(cross[:, 0]), expected["cls_logits"])


# -- conversion: window/resolution interpolation and the official remaps -------------------------------


def _dst_interp_config(ref: dict):
    """The interpolation destination: the source architecture at the destination yaml's resolution/window."""
    root = ref["dir"]
    yaml = json.loads((root / "configs/yaml_interp_dst_retrieval.json").read_text())
    window = json.loads((root / yaml["vision_config"]).read_text())["window_size"]
    source = convert_official(root / "checkpoints/swin_interp_src_pretrain.th").config
    vision = dataclasses.replace(source.vision, image_res=yaml["image_res"], window_size=window)
    return dataclasses.replace(source, vision=vision, heads=LAYOUT_HEADS["retrieval"])


@torch.no_grad()
def test_swin_window_interpolation(ref: dict) -> None:
    expected = ref["load"]("expected/interp.pt")
    converted = convert_official(ref["dir"] / "checkpoints/swin_interp_src_pretrain.th", target=_dst_interp_config(ref))
    weights, buffers = converted.model.state_dict(), dict(converted.model.named_buffers())
    checked = 0
    for key, value in expected.items():
        if key.endswith("relative_position_bias_table"):
            _close(key, weights[key], value, 1e-6)
            assert key in converted.report.transformed
        elif key.endswith(("relative_position_index", "attn_mask")):
            assert torch.equal(buffers[key].to(value.dtype), value), key
        else:
            continue
        checked += 1
    assert checked == sum(k.startswith("vision_encoder.") for k in expected)
    _close("vision_full_dst", converted.model.encode_image(expected["pixel_values_dst"]), expected["vision_full_dst"])


def test_clip_position_embedding_interpolation(ref: dict) -> None:
    expected = ref["load"]("expected/clip_retrieval.pt")["remap_pos_embed"]
    source = convert_official(ref["dir"] / "checkpoints/clip_pretrain.th").config
    grid = int((expected.shape[0] - 1) ** 0.5)
    vision = dataclasses.replace(source.vision, image_res=grid * source.vision.patch_size)
    target = dataclasses.replace(source, vision=vision, heads=LAYOUT_HEADS["retrieval"])
    converted = convert_official(ref["dir"] / "checkpoints/clip_pretrain.th", target=target)
    _close("remap_pos_embed", converted.model.state_dict()["vision_encoder.pos_embed.weight"], expected, 1e-6)


def _remap_cases(reference_dir: Path) -> list[tuple[str, str, str]]:
    """(remap manifest, source pretrain checkpoint, fine-tuned checkpoint or '' for the interp case)."""
    cases = []
    for path in sorted((reference_dir / "remap").glob("*.json")):
        name = path.stem
        if name == "logs":
            continue
        source = "clip_pretrain" if name.startswith("clip") else "swin_interp_src_pretrain" if "interp" in name else "swin_pretrain"
        cases.append((name, source, "" if "interp" in name else name))
    return cases


def test_official_remaps_key_by_key(ref: dict) -> None:
    """Starting a task from a pretrain checkpoint supplies exactly the keys the official loader does."""
    root = ref["dir"]
    cases = _remap_cases(root)
    assert cases, "no remap manifests found"
    for name, source, finetuned in cases:
        manifest = json.loads((root / "remap" / f"{name}.json").read_text())
        official, _ = read_official(root / "checkpoints" / f"{source}.th")
        target = convert_official(root / "checkpoints" / f"{finetuned}.th").config if finetuned else _dst_interp_config(ref)
        layout = detect_layout(read_official(root / "checkpoints" / f"{finetuned}.th")[0]) if finetuned else "retrieval"
        converted = convert_official(root / "checkpoints" / f"{source}.th", target=target)
        ours = converted.model.state_dict()
        for key, entry in manifest["keys"].items():
            our_key = _official_key_to_ours(key, layout)
            if key.endswith(("relative_position_index", "attn_mask", "position_ids", *TIED)):
                continue  # rebuilt buffers and tied copies: checked by the interp fixture and the manifests
            if entry["status"] == "copied":
                assert torch.equal(ours[our_key], official[entry["sources"][0]]), f"{name}: {key}"
            elif entry["status"] == "transformed":
                assert our_key in converted.report.transformed, f"{name}: {key}"
            else:
                assert our_key in converted.report.missing, f"{name}: {key} should be left to the constructor"
        tied = tuple(TIED)
        unused = {_official_key_to_ours(k, "pretrain") for k in manifest["unexpected_keys"] if not k.endswith(tied)}
        assert unused == set(converted.report.unexpected), name


def _official_key_to_ours(key: str, layout: str) -> str:
    for old, new in RENAMES[layout]:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


# -- base-size manifests --------------------------------------------------------------------------------


def _manifest_preset(name: str, manifest: dict):
    """Our preset for a manifest file name such as `swinB384_vqa` or `clipvitB16_224_pretrain`."""
    match = re.fullmatch(r"(swinB|clipvitB16_)(\d+)_(\w+)", name)
    assert match, f"unrecognised manifest name {name}"
    family, res, layout = match.group(1), int(match.group(2)), match.group(3)
    preset = {"swinB": {224: "xvlm-base-4m-224", 384: "xvlm-base-16m-384"}.get(res), "clipvitB16_": "clip-vit-b16"}[family]
    config = get_preset(preset, LAYOUT_HEADS[layout])
    config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, image_res=res))
    assert config.vision.image_res == manifest["config"]["image_res"]
    if "num_dec_layers" in manifest["config"]:
        assert config.vqa_decoder_layers == manifest["config"]["num_dec_layers"]
    if "embed_dim" in manifest["config"]:
        config = dataclasses.replace(config, embed_dim=manifest["config"]["embed_dim"])
    return config, layout


def test_base_manifests_match_presets(reference_dir: Path) -> None:
    paths = sorted((reference_dir / "manifests").glob("*.json"))
    assert paths, "no base-size manifests found"
    for path in paths:
        manifest = json.loads(path.read_text())
        config, layout = _manifest_preset(path.stem, manifest)
        with torch.device("meta"):
            model = XVLM(config)
        official = ours_to_official(model, layout)
        expected = {k["key"]: (tuple(k["shape"]), k["dtype"]) for k in manifest["keys"]}
        produced = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in official.items()}
        assert produced == expected, f"{path.stem}: keys/shapes differ: {sorted(set(produced) ^ set(expected))[:8]}"
        unique = {id(p): p.numel() for p in model.parameters()}
        assert sum(unique.values()) == manifest["num_unique_parameters"], path.stem

        # And back: the manifest's official keys convert onto exactly our model's keys.
        fake = {}
        for entry in manifest["keys"]:
            fake[entry["key"]] = fake[entry["tied_to"]] if entry["tied_to"] else torch.empty(entry["shape"], device="meta")
        ours, dropped = official_to_ours(fake, layout)
        assert set(ours) == set(model.state_dict()), path.stem
        assert all(k.endswith(("position_ids", "relative_position_index", "attn_mask", "decoder.weight", "decoder.bias")) for k in dropped)
