"""Checkpoints: our directory format, and converters from the six official X-VLM layouts.

Ours is a directory of `config.json` (the `ModelConfig` tree), `model.safetensors`, `vocab.txt` and, for a
VQA model, optionally `answer_list.json` (the candidates `Model.answer` ranks by default): no pickle,
nothing executed on load. Official `.th` files are `{"model": state_dict, "config": yaml}`
pickles; they are read with `torch.load(weights_only=True)`, so a pickle carrying code is refused.

Conversion is a pure function per direction: `official_to_ours` renames by the table below, drops the
buffers we rebuild and the tensors tied to others (after checking they really are equal), and
`ours_to_official` is its inverse. `remap` does what the official non-eval `load_pretrained` does when a
checkpoint starts another task or resolution: interpolate Swin relative-position tables and CLIP
position embeddings, duplicate fusion layers for NLVR2, seed the VQA and captioning decoders.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from xvlm_edge.config import LAYOUT_HEADS, ClipVitConfig, ModelConfig, SwinConfig, TextConfig, tasks_from_yaml
from xvlm_edge.errors import CheckpointError
from xvlm_edge.files import atomic_directory
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE = "config.json", "model.safetensors", "vocab.txt"
ANSWER_LIST_FILE = "answer_list.json"  # optional: a JSON list of answer strings (the official VQA answer_list.json)
#: Optional: held-out images of the model's own domain. An INT8 export given no --eval-images is gated on them
#: (generated images otherwise), so a domain model is judged on what it will see.
GATE_IMAGES_DIR = "gate_images"

#: Official key prefix -> ours, per layout. Everything not listed keeps its name.
RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "pretrain": (("text_encoder.bert.", "text_encoder."), ("text_encoder.cls.predictions.", "mlm_head.")),
    "retrieval": (),
    "bbox": (),
    "nlvr": (),
    "vqa": (("text_decoder.bert.", "answer_decoder.bert."), ("text_decoder.cls.predictions.", "answer_decoder.head.")),
    "captioning": (("text_decoder.bert.", "caption_decoder.bert."), ("text_decoder.cls.predictions.", "caption_decoder.head.")),
}

#: Official buffers we rebuild from the config instead of loading (suffixes of the official keys).
DROPPED_BUFFERS = ("embeddings.position_ids", "vision_encoder.position_ids", "relative_position_index", "attn_mask")

#: Official LM-head tensors that share storage with another key of the same owner (`text_encoder.`, ...).
TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.bias": "cls.predictions.bias"}


@dataclass
class ConversionReport:
    """What a conversion did with every key, so nothing is silently lost or invented."""

    layout: str
    dropped: list[str] = field(default_factory=list)  # official buffers / tied copies, rebuilt or re-tied
    transformed: list[str] = field(default_factory=list)  # interpolated to a new window or resolution
    missing: list[str] = field(default_factory=list)  # ours, not supplied: left at the constructor's values
    unexpected: list[str] = field(default_factory=list)  # official, not used by the target model


# -- reading official files ---------------------------------------------------------------------------


def read_official(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, yaml config) of an official `.th`/`.pth`, read without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is corrupt or holds pickled objects other than tensors and plain containers; refusing to "
            "load it (weights_only=True). Official X-VLM checkpoints contain only tensors and dicts.",
            hint="if you trust the file, re-save its state_dict with torch.save({'model': sd}, ...)",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {exc}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    state = obj.get("model", obj)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the 'model' entry is not a state_dict of tensors")
    config = obj.get("config", {}) if isinstance(obj.get("config", {}), Mapping) else {}
    return dict(state), dict(config)


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Which official model class wrote this state_dict, from the keys only it has."""
    has = lambda prefix: any(k.startswith(prefix) for k in state)  # noqa: E731
    if not has("vision_encoder."):
        sample = ", ".join(sorted(state)[:5]) or "no keys"
        raise CheckpointError(f"not an X-VLM checkpoint: no vision_encoder.* keys (found {sample}, ...)")
    if has("text_decoder."):
        return "vqa" if has("text_encoder.") else "captioning"
    if not has("text_encoder."):
        raise CheckpointError("unknown X-VLM layout: a vision encoder but neither text_encoder.* nor text_decoder.*")
    if has("text_encoder.bert.") or has("text_encoder.cls."):
        return "pretrain"
    if has("cls_head."):
        return "nlvr"
    if has("itm_head.") and has("vision_proj."):
        return "retrieval"
    if has("bbox_head."):
        return "bbox"
    raise CheckpointError("unknown X-VLM layout: text_encoder.* without any of itm_head, bbox_head or cls_head")


# -- config inference ---------------------------------------------------------------------------------


def infer_config(
    state: Mapping[str, torch.Tensor], layout: str, yaml: Mapping | None = None, config_root: Path | None = None
) -> ModelConfig:
    """The `ModelConfig` of an official state_dict: dimensions from tensor shapes, the rest from its jsons.

    Head counts, eps and activations are not visible in shapes; they come from the vision/text json the
    yaml names (resolved under `config_root`), or default to the base models' values (64-wide heads).
    """
    yaml = dict(yaml or {})
    try:
        return _infer_config(state, layout, yaml, config_root)
    except (CheckpointError, KeyError, ValueError, TypeError) as exc:
        unresolved = [ref for ref in (yaml.get("vision_config"), yaml.get("text_config")) if ref and _resolve_ref(ref, config_root) is None]
        if unresolved:
            raise CheckpointError(
                f"the inferred {layout} config is invalid: {exc}; the yaml's {', '.join(unresolved)} were not found under "
                f"{config_root} or the working directory, so head counts were guessed (width // 64)",
                hint="pass config_root, the directory the yaml's configs/ paths resolve from (xvlm-edge convert --config-root DIR)",
            ) from exc
        raise CheckpointError(f"the inferred {layout} config is invalid: {exc}", hint="the checkpoint or its yaml is inconsistent") from exc


def _infer_config(state: Mapping[str, torch.Tensor], layout: str, yaml: dict, config_root: Path | None) -> ModelConfig:
    vision_json = _read_json_ref(yaml.get("vision_config"), config_root)
    text_json = _read_json_ref(yaml.get("text_config"), config_root)
    if "vision_encoder.patch_embed.proj.weight" in state:
        vision = _infer_swin(state, yaml, vision_json)
    else:
        vision = _infer_clip(state, vision_json)
    prefix = {"pretrain": "text_encoder.bert.", "captioning": "text_decoder.bert."}.get(layout, "text_encoder.")
    text = _infer_text(state, prefix, layout, text_json)
    config = ModelConfig(vision=vision, text=text, heads=LAYOUT_HEADS[layout])
    extra = {}
    if "vision_proj.weight" in state:
        extra["embed_dim"] = state["vision_proj.weight"].shape[0]
    if layout == "vqa" and _count_layers(state, "text_decoder.bert.encoder.layer.") != config.vqa_decoder_layers:
        raise CheckpointError("the VQA answer decoder must have as many layers as the fusion encoder (official rule)")
    if "max_tokens" in yaml:
        extra["max_tokens"] = int(yaml["max_tokens"])
    extra["tasks"] = tasks_from_yaml(yaml, layout)
    return ModelConfig(**{**config.__dict__, **extra})


def _infer_swin(state: Mapping[str, torch.Tensor], yaml: Mapping, vision_json: Mapping) -> SwinConfig:
    proj = state["vision_encoder.patch_embed.proj.weight"]
    num_stages = _count_layers(state, "vision_encoder.layers.")
    depths = tuple(_count_layers(state, f"vision_encoder.layers.{i}.blocks.") for i in range(num_stages))
    tables = [state[f"vision_encoder.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(num_stages)]
    # A stage smaller than the window uses a smaller table, so the json's window wins when it is at hand.
    window = int(vision_json.get("window_size", (math.isqrt(max(t.shape[0] for t in tables)) + 1) // 2))
    fc1 = state["vision_encoder.layers.0.blocks.0.mlp.fc1.weight"]
    image_res = yaml.get("image_res")
    if image_res is None:
        mask = state.get("vision_encoder.layers.0.blocks.1.attn_mask")
        if mask is None:
            raise CheckpointError("cannot tell the Swin image resolution: no yaml image_res and no attn_mask buffer")
        image_res = math.isqrt(mask.shape[0]) * window * proj.shape[-1]
    return SwinConfig(
        image_res=int(image_res),
        patch_size=proj.shape[-1],
        embed_dim=proj.shape[0],
        depths=depths,
        num_heads=tuple(t.shape[1] for t in tables),
        window_size=window,
        mlp_ratio=fc1.shape[0] / fc1.shape[1],
        ape="vision_encoder.absolute_pos_embed" in state,
    )


def _infer_clip(state: Mapping[str, torch.Tensor], vision_json: Mapping) -> ClipVitConfig:
    width = state["vision_encoder.class_embedding"].shape[0]
    patch = state["vision_encoder.patch_embed.weight"].shape[-1]
    grid = math.isqrt(state["vision_encoder.pos_embed.weight"].shape[0] - 1)
    if "num_attention_heads" not in vision_json:
        log.warning("CLIP vision json not found; assuming 64-wide heads and local_attn_depth 4 (ViT-B/16)")
    return ClipVitConfig(
        image_res=grid * patch,
        patch_size=patch,
        width=width,
        num_layers=_count_layers(state, "vision_encoder.encoder.layers."),
        num_heads=int(vision_json.get("num_attention_heads", width // 64)),
        intermediate_size=state["vision_encoder.encoder.layers.0.mlp.fc1.weight"].shape[0],
        local_attn_depth=int(vision_json.get("local_attn_depth", 4)),
        hidden_act=vision_json.get("hidden_act", "quick_gelu"),
    )


def _infer_text(state: Mapping[str, torch.Tensor], prefix: str, layout: str, text_json: Mapping) -> TextConfig:
    words = state[prefix + "embeddings.word_embeddings.weight"]
    if "num_attention_heads" not in text_json:
        log.warning("text json not found; assuming 64-wide heads (%d heads for width %d)", words.shape[1] // 64, words.shape[1])
    layers = _count_layers(state, prefix + "encoder.layer.")
    fusion = min(
        (int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"encoder\.layer\.(\d+)\.crossattention\.", k))),
        default=layers,
    )
    if layout == "nlvr":
        layers = fusion + (layers - fusion) // 2  # the official NLVR2 stack doubles every fusion layer
    return TextConfig(
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        num_layers=layers,
        num_heads=int(text_json.get("num_attention_heads", words.shape[1] // 64)),
        intermediate_size=state[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[prefix + "embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state[prefix + "embeddings.token_type_embeddings.weight"].shape[0],
        fusion_layer=fusion,
        layer_norm_eps=float(text_json.get("layer_norm_eps", 1e-12)),
        hidden_act=text_json.get("hidden_act", "gelu"),
    )


def _count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _read_json_ref(ref: str | None, root: Path | None) -> dict:
    """The official yamls name jsons relative to the training working directory; look where it may be."""
    path = _resolve_ref(ref, root)
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}, which the checkpoint's yaml names: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}, which the checkpoint's yaml names, is not a JSON object")
    return data


def _resolve_ref(ref: str | None, root: Path | None) -> Path | None:
    if not ref:
        return None
    for base in (root, Path.cwd()):
        if base is not None and (Path(base) / ref).exists():
            return Path(base) / ref
    return None


# -- official <-> ours --------------------------------------------------------------------------------


def official_to_ours(state: Mapping[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official state_dict to ours; returns (state, dropped official keys)."""
    out, dropped = {}, []
    for key, value in state.items():
        if key.endswith(DROPPED_BUFFERS):
            dropped.append(key)
            continue
        suffix = next((s for s in TIED if key.endswith(s)), None)
        if suffix is not None:
            source_key = key[: -len(suffix)] + TIED[suffix]
            if source_key not in state or (state[source_key] is not value and not torch.equal(state[source_key], value)):
                raise CheckpointError(f"{key} should be tied to {source_key} but differs; the checkpoint is inconsistent")
            dropped.append(key)
            continue
        out[_rename(key, RENAMES[layout])] = value
    return out, dropped


def ours_to_official(model: XVLM, layout: str) -> dict[str, torch.Tensor]:
    """The official state_dict of `model` in `layout`: renamed keys, tied copies and rebuilt buffers added."""
    back = tuple((b, a) for a, b in RENAMES[layout])
    state = {_rename(k, back): v for k, v in model.state_dict().items()}
    for name, buffer in model.named_buffers():  # non-persistent: rebuilt here exactly as the official saves them
        if name.endswith(("relative_position_index", "attn_mask")) and buffer is not None:
            state[name] = buffer
    config = model.config
    if config.vision.kind == "clip_vit":
        state["vision_encoder.position_ids"] = torch.arange(config.vision.grid**2 + 1)[None]
    for owner in {k[: k.index("embeddings.word_embeddings.weight")] for k in state if k.endswith("embeddings.word_embeddings.weight")}:
        state[owner + "embeddings.position_ids"] = torch.arange(config.text.max_position_embeddings)[None]
    for key in [k for k in state if k.endswith("cls.predictions.bias")]:
        owner = key[: -len("cls.predictions.bias")]
        for suffix, source in TIED.items():
            state[owner + suffix] = state[owner + source]
    return state


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


# -- remapping to another layout or resolution (the official non-eval load) ----------------------------


def remap(state: dict[str, torch.Tensor], source: ModelConfig, target: ModelConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our state of `source` -> our state for `target`; returns (state, transformed keys).

    Mirrors the official `load_pretrained(..., is_eval=False)` of each fine-tuning class.
    """
    state, transformed = dict(state), []
    if type(source.vision) is not type(target.vision):
        raise CheckpointError(f"cannot remap a {source.vision.kind} image encoder to {target.vision.kind}")
    if isinstance(target.vision, SwinConfig) and source.vision.window_size != target.vision.window_size:
        size = (2 * target.vision.window_size - 1) ** 2
        for key in [k for k in state if k.endswith("relative_position_bias_table")]:
            state[key] = interpolate_relative_position_table(state[key], size)
            transformed.append(key)
    if isinstance(target.vision, ClipVitConfig) and source.vision.grid != target.vision.grid:
        key = "vision_encoder.pos_embed.weight"
        state[key] = interpolate_position_embedding(state[key], target.vision.grid)
        transformed.append(key)
    key = "vision_encoder.absolute_pos_embed"  # Swin's optional `ape`, one row per first-stage patch
    if key in state and source.vision.image_res != target.vision.image_res:
        side = target.vision.image_res // target.vision.patch_size
        state[key] = interpolate_position_embedding(state[key][0], side, prefix_rows=0)[None]
        transformed.append(key)

    heads = set(target.heads)
    fusion = source.text.fusion_layer
    encoder = {k: v for k, v in state.items() if k.startswith("text_encoder.")}
    mlm = {k: v for k, v in state.items() if k.startswith("mlm_head.")}
    seeded = False  # the decoders start from the pretrained text stack and MLM head, as the official loaders do
    if "caption" in heads and "caption" not in source.heads:
        for key, value in encoder.items():
            state[key.replace("text_encoder.", "caption_decoder.bert.", 1)] = value
        for key, value in mlm.items():
            state[key.replace("mlm_head.", "caption_decoder.head.", 1)] = value
        seeded = True
    if "vqa" in heads and "vqa" not in source.heads:
        cross_kv_fits = target.vision.width == target.text.hidden_size
        for key, value in mlm.items():
            state[key.replace("mlm_head.", "answer_decoder.head.", 1)] = value
        for key, value in encoder.items():
            layer = _layer_index(key)
            if layer is not None and (layer < fusion or (not cross_kv_fits and re.search(r"crossattention\.self\.(key|value)", key))):
                continue
            new = key
            if layer is not None:
                new = new.replace(f"text_encoder.encoder.layer.{layer}.", f"answer_decoder.bert.encoder.layer.{layer - fusion}.", 1)
            state[new.replace("text_encoder.", "answer_decoder.bert.", 1)] = value
        seeded = True
    if seeded and "mlm" not in heads:  # moved into a decoder head, not left over
        for key in mlm:
            state.pop(key)
    if seeded and not target.has_text_encoder:
        for key in encoder:
            state.pop(key)
    if "nlvr" in heads and "nlvr" not in source.heads:
        fusion_keys = [k for k in state if k.startswith("text_encoder.encoder.layer.") and _layer_index(k) >= fusion]
        moved = {k: state.pop(k) for k in fusion_keys}
        for key, value in moved.items():
            layer = _layer_index(key)
            for copy in (0, 1):
                state[key.replace(f".layer.{layer}.", f".layer.{fusion + 2 * (layer - fusion) + copy}.", 1)] = value
    return state, transformed


def _layer_index(key: str) -> int | None:
    match = re.search(r"encoder\.layer\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def interpolate_relative_position_table(table: torch.Tensor, dst_num_pos: int) -> torch.Tensor:
    """Resize a Swin (2w-1)^2 x heads bias table to another window, as X-VLM/BEiT do.

    The source offsets are spread on a geometric progression that reaches the destination's extent, and
    every head is fitted with an interpolating bicubic spline evaluated at the integer destination
    offsets. The official code used `scipy.interpolate.interp2d(kind="cubic")`, removed in SciPy 1.14; on
    a rectangular grid that is FITPACK's `regrid` with s=0, which `RectBivariateSpline(kx=ky=3, s=0)` runs.
    """
    src_size, dst_size = math.isqrt(table.shape[0]), math.isqrt(dst_num_pos)
    if src_size == dst_size:
        return table
    try:
        import numpy as np
        from scipy.interpolate import RectBivariateSpline
    except ImportError as exc:
        raise CheckpointError("resizing Swin windows needs SciPy", hint="pip install 'xvlm-edge[convert]'") from exc
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:  # the ratio q whose progression 1, q, q^2 ... spans half the destination table
        q = (lo + hi) / 2.0
        if (1.0 - q ** (src_size // 2)) / (1.0 - q) > dst_size // 2:
            hi = q
        else:
            lo = q
    dis, cur = [], 1.0
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    src = np.array([-d for d in reversed(dis)] + [0.0] + dis)
    half = dst_size // 2
    dst = np.arange(-half, half + 0.1, 1.0)
    heads = []
    for h in range(table.shape[1]):
        z = table[:, h].view(src_size, src_size).float().numpy()  # z[row=y, col=x]
        spline = RectBivariateSpline(src, src, z.T, kx=3, ky=3, s=0)  # fitted over (x, y)
        heads.append(torch.from_numpy(spline(dst, dst).T.astype(np.float32)).reshape(-1, 1))
    return torch.cat(heads, dim=-1)


def interpolate_position_embedding(pos: torch.Tensor, grid: int, prefix_rows: int = 1) -> torch.Tensor:
    """(prefix + g^2, C) position embedding -> (prefix + grid^2, C): bicubic, align_corners=False, the
    `prefix_rows` leading rows (CLIP's class row; none for Swin's `ape`) kept as they are."""
    src = math.isqrt(pos.shape[0] - prefix_rows)
    if src == grid:
        return pos
    patches = pos[prefix_rows:].reshape(1, src, src, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:prefix_rows], patches.permute(0, 2, 3, 1).flatten(0, 2).to(pos.dtype)], dim=0)


# -- building and loading ------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded model with the tokenizer its ids belong to (model None: config and vocabulary only, for a
    backend that runs exported graphs and never needs the PyTorch module). `answer_list`: the VQA answer
    candidates that `Model.answer` ranks when the caller gives none (None: it generates)."""

    model: XVLM | None
    tokenizer: Tokenizer
    config: ModelConfig
    report: ConversionReport | None = None
    answer_list: list[str] | None = None

    def __post_init__(self) -> None:
        if self.answer_list is not None:
            self.answer_list = check_answer_list(self.answer_list, "answer_list")


def check_answer_list(answers: object, source: str) -> list[str]:
    """A VQA answer list is a non-empty JSON list of strings; anything else is refused, naming `source`."""
    if not isinstance(answers, (list, tuple)) or not answers:
        raise CheckpointError(f"{source} must be a non-empty list of answer strings, got {type(answers).__name__} {answers!r:.60}")
    bad = next((i for i, a in enumerate(answers) if not isinstance(a, str)), None)
    if bad is not None:
        raise CheckpointError(f"{source}[{bad}] is {answers[bad]!r}, not a string; an answer list holds answer strings")
    return list(answers)


def read_answer_list(path: str | Path) -> list[str]:
    """Read and check an answer list file (the official VQA `answer_list.json`: a JSON list of strings)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read answer list {path}: {exc}", hint="an answer list is a JSON list of strings") from exc
    return check_answer_list(data, str(path))


def convert_official(
    path: str | Path,
    *,
    target: ModelConfig | None = None,
    vocab: str | Path | None = None,
    config_root: str | Path | None = None,
    answer_list: str | Path | None = None,
) -> Checkpoint:
    """Load an official X-VLM checkpoint of any layout into our model.

    `target` (default: the checkpoint's own architecture) may change the layout or resolution, as
    starting a fine-tuning run does; keys it needs that the checkpoint lacks are reported as `missing`
    and keep their initial values. `config_root` is where the yaml's relative json/vocab paths resolve
    (default: the checkpoint's grandparent, the official repo layout, then the working directory).
    `answer_list` is a VQA answer list file (the official `answer_list.json`); `save` writes it beside the
    weights, and `Model.answer` then ranks over it by default.

    The inferred config is checked like any other (positive sizes, heads dividing widths, the vocabulary's
    size equal to the embedding's): a checkpoint whose yaml jsons cannot be found is refused with that
    reason, not converted with guessed head counts that do not fit.
    """
    path = Path(path)
    answers = read_answer_list(answer_list) if answer_list is not None else None
    state, yaml = read_official(path)
    layout = detect_layout(state)
    root = Path(config_root) if config_root is not None else path.resolve().parent.parent
    source = infer_config(state, layout, yaml, root)
    ours, dropped = official_to_ours(state, layout)
    report = ConversionReport(layout=layout, dropped=sorted(dropped))
    config = source if target is None else target
    if target is not None:
        ours, report.transformed = remap(ours, source, target)
    model = XVLM(config)
    expected = model.state_dict()
    report.unexpected = sorted(k for k in ours if k not in expected)
    report.missing = sorted(k for k in expected if k not in ours)
    for key in report.unexpected:
        ours.pop(key)
    if target is None and report.missing:
        raise CheckpointError(f"{layout} checkpoint {path} lacks keys the model needs: {report.missing[:8]}")
    for key, value in ours.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(expected[key].shape)}")
    _check_shared(model, ours)
    model.load_state_dict(ours, strict=False)
    model.eval()
    vocab_path = Path(vocab) if vocab is not None else _official_vocab(yaml, root)
    tokenizer = Tokenizer.from_file(vocab_path) if vocab_path is not None else Tokenizer.default()
    if len(tokenizer) != config.text.vocab_size:
        raise CheckpointError(
            f"vocabulary has {len(tokenizer)} tokens but the checkpoint's embeddings have {config.text.vocab_size}",
            hint="pass the vocab.txt the checkpoint was trained with (--vocab)",
        )
    if answers is not None and "vqa" not in config.heads:
        raise CheckpointError(f"an answer list was given, but {path} is a {layout} checkpoint without the vqa head")
    return Checkpoint(model, tokenizer, config, report, answers)


def _check_shared(model: XVLM, state: Mapping[str, torch.Tensor]) -> None:
    """Keys that are one parameter in the model (NLVR2 cross K/V) must hold equal tensors in the checkpoint."""
    first_key: dict[int, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        owner = first_key.setdefault(id(tensor), key)
        if owner != key and key in state and owner in state and not torch.equal(state[owner], state[key]):
            raise CheckpointError(f"{key} must equal {owner} (one shared parameter) but the checkpoint differs")


def _official_vocab(yaml: Mapping, root: Path) -> Path | None:
    ref = yaml.get("text_encoder")
    path = _resolve_ref(f"{ref}/vocab.txt", root) if ref else None
    return path if path is not None and path.is_file() else None


def save(checkpoint: Checkpoint, directory: str | Path, gate_images: Sequence[Path] = ()) -> Path:
    """Write our format atomically (`atomic_directory`), with `answer_list.json` when the checkpoint has one
    and a copy of `gate_images` (image files) in `GATE_IMAGES_DIR`."""
    from safetensors.torch import save_model

    if checkpoint.model is None:
        raise CheckpointError("cannot save a checkpoint loaded without its weights (weights=False)")
    with atomic_directory(directory) as tmp:
        checkpoint.config.save(tmp / CONFIG_FILE)
        save_model(checkpoint.model, str(tmp / WEIGHTS_FILE))
        checkpoint.tokenizer.save(tmp / VOCAB_FILE)
        if checkpoint.answer_list is not None:
            (tmp / ANSWER_LIST_FILE).write_text(json.dumps(checkpoint.answer_list, ensure_ascii=False) + "\n", encoding="utf-8")
        if gate_images:
            (tmp / GATE_IMAGES_DIR).mkdir()
            for image in gate_images:
                shutil.copyfile(image, tmp / GATE_IMAGES_DIR / Path(image).name)
    return Path(directory)


def load_directory(directory: str | Path, *, weights: bool = True) -> Checkpoint:
    """Load our format, strictly: every tensor the config implies must be there, with its shape.

    `weights=False` reads only the config, vocabulary and answer list (an exported backend's needs: no
    PyTorch module, none of its memory). `answer_list.json`, when present, must be a non-empty list of strings."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not an xvlm_edge checkpoint: {name} is missing")
    config = ModelConfig.load(directory / CONFIG_FILE)
    answers = read_answer_list(directory / ANSWER_LIST_FILE) if (directory / ANSWER_LIST_FILE).exists() else None
    tokenizer = Tokenizer.from_file(directory / VOCAB_FILE)
    if len(tokenizer) != config.text.vocab_size:
        raise CheckpointError(f"{directory / VOCAB_FILE} has {len(tokenizer)} tokens but config.json's text.vocab_size is {config.text.vocab_size}")
    if not weights:
        return Checkpoint(None, tokenizer, config, answer_list=answers)
    model = XVLM(config)
    try:
        missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is corrupt or does not match config.json: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not match config.json (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return Checkpoint(model.eval(), tokenizer, config, answer_list=answers)


def load(path: str | Path) -> Checkpoint:
    """Our checkpoint directory or an official `.th`/`.pth` file, whichever `path` is."""
    path = Path(path)
    if path.is_dir():
        return load_directory(path)
    if path.is_file():
        return convert_official(path)
    raise CheckpointError(f"no checkpoint at {path}")
