"""One config tree for every X-VLM model, and the named presets.

Every dimension of every module is read from here; nothing below `models/` repeats a number.
The tree round-trips through `config.json` (`to_dict` / `from_dict`), and an unknown key is an error,
so a typo in a checkpoint's config never silently falls back to a default. Every field is checked when a
config is built (`__post_init__`): its type, its range, and the relations between fields (heads divide widths,
the Swin stages tile the image), so a bad `config.json` is refused at load with the field's name, not by a
shape error deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xvlm_edge.errors import CheckpointError

#: The task heads a model can carry. Which ones a checkpoint has is part of its layout.
HEADS = ("itc", "itm", "bbox", "mlm", "nlvr", "vqa", "caption")

#: How the `bbox` head reads a box (`models/box_head.py`). "cls": the official MLP on the fused [CLS].
#: "attend": the phrase attends over the image's patches and the centre is the attention-weighted mean of
#: the patch centres around the strongest one (training/README.md has the measurements that made the tiny
#: model need it). "attend_position": the same, and the phrase also chooses a direction on the grid that its
#: scores prefer ("the leftmost star"; `models/box_head.py`).
BOX_HEADS = ("cls", "attend", "attend_position")

#: Activations the models implement (`models/layers.py::ACTIVATIONS`).
HIDDEN_ACTS = ("gelu", "quick_gelu")

#: Heads each official checkpoint layout carries (models/model_<layout>.py in the official repo).
LAYOUT_HEADS: dict[str, tuple[str, ...]] = {
    "pretrain": ("itc", "itm", "mlm", "bbox"),
    "retrieval": ("itc", "itm"),
    "bbox": ("bbox",),
    "captioning": ("caption",),
    "vqa": ("vqa",),
    "nlvr": ("nlvr",),
}


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer image encoder; the official X-VLM default backbone."""

    kind: Literal["swin"] = "swin"
    image_res: int = 384
    patch_size: int = 4
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5
    # Swin's optional absolute position embedding (`ape`), off in every official checkpoint. Relative biases
    # alone leave the final patches with no idea where they are; a pretrained Swin has learned it, a model trained
    # from scratch must learn it before it can regress a box.
    ape: bool = False

    def __post_init__(self) -> None:
        _kind(self, "swin")
        for name in ("image_res", "patch_size", "embed_dim", "window_size"):
            _int(self, name)
        _ints(self, "depths")
        _ints(self, "num_heads")
        _real(self, "mlp_ratio")
        _real(self, "layer_norm_eps")
        if not isinstance(self.ape, bool):
            raise CheckpointError(f"vision.ape must be true or false, got {self.ape!r}")
        if len(self.num_heads) != len(self.depths):
            raise CheckpointError(f"vision.num_heads {list(self.num_heads)} must give one head count per stage of depths {list(self.depths)}")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise CheckpointError(f"vision.num_heads[{i}] = {heads} does not divide stage {i}'s width {self.embed_dim * 2**i}")
        stride = self.patch_size * 2 ** (len(self.depths) - 1)
        if self.image_res % stride:
            raise CheckpointError(
                f"vision.image_res {self.image_res} is not a multiple of {stride} (patch_size {self.patch_size} x 2 per patch "
                f"merge over {len(self.depths)} stages)"
            )
        for i in range(len(self.depths)):
            side = self.image_res // self.patch_size // 2**i
            if side > self.window_size and side % self.window_size:
                raise CheckpointError(f"vision.window_size {self.window_size} does not tile stage {i}'s {side} x {side} patch grid")

    @property
    def width(self) -> int:
        """Channels of the final stage: each patch merge doubles them."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def grid(self) -> int:
        """Side of the final patch grid: patch embedding, then one 2x merge per stage but the last."""
        return self.image_res // self.patch_size // 2 ** (len(self.depths) - 1)

    @property
    def box_patch_size(self) -> int:
        """Pixels per final-grid patch, the unit of the box -> patch-mask rule (32 for Swin-B)."""
        return self.image_res // self.grid


@dataclass(frozen=True)
class ClipVitConfig:
    """CLIP ViT image encoder with box-masked self-attention in its last `local_attn_depth` layers."""

    kind: Literal["clip_vit"] = "clip_vit"
    image_res: int = 224
    patch_size: int = 16
    width: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    local_attn_depth: int = 4
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        _kind(self, "clip_vit")
        for name in ("image_res", "patch_size", "width", "num_layers", "num_heads", "intermediate_size"):
            _int(self, name)
        _int(self, "local_attn_depth", minimum=0)
        _real(self, "layer_norm_eps")
        _act(self)
        if self.image_res % self.patch_size:
            raise CheckpointError(f"vision.image_res {self.image_res} is not a multiple of vision.patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise CheckpointError(f"vision.num_heads {self.num_heads} does not divide vision.width {self.width}")
        if self.local_attn_depth > self.num_layers:
            raise CheckpointError(f"vision.local_attn_depth {self.local_attn_depth} exceeds vision.num_layers {self.num_layers}")

    @property
    def grid(self) -> int:
        return self.image_res // self.patch_size

    @property
    def box_patch_size(self) -> int:
        return self.patch_size


VisionConfig = SwinConfig | ClipVitConfig


@dataclass(frozen=True)
class TextConfig:
    """BERT text encoder; layers from `fusion_layer` on also cross-attend to the image."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    fusion_layer: int = 6
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            _int(self, name)
        _int(self, "fusion_layer", minimum=0)
        _real(self, "layer_norm_eps")
        _act(self)
        if self.hidden_size % self.num_heads:
            raise CheckpointError(f"text.num_heads {self.num_heads} does not divide text.hidden_size {self.hidden_size}")
        if self.fusion_layer > self.num_layers:
            raise CheckpointError(f"text.fusion_layer {self.fusion_layer} outside 0..{self.num_layers} text layers")


@dataclass(frozen=True)
class TaskConfig:
    """Task settings a checkpoint carries; defaults are the official fine-tuning yamls (or their fixtures').

    The official captioning yaml sets prompt / max_length / min_length / num_beams, the VQA and retrieval
    yamls set `k_test`; a converted checkpoint reads them from its yaml (`checkpoint.infer_config`).
    """

    caption_prompt: str = "a picture of "
    caption_max_length: int = 20  # counts the prompt's tokens, as the official `generate`
    caption_min_length: int = 5  # counts the prompt's tokens too (HF MinLengthLogitsProcessor)
    caption_num_beams: int = 3
    vqa_k_test: int = 128  # configs/VQA.yaml: answers re-scored after the first-token ranking
    answer_max_length: int = 10  # open-ended answers: new tokens at most, [SEP] included
    retrieval_k_test: int = 256  # configs/Retrieval_coco.yaml: candidates re-ranked by ITM

    def __post_init__(self) -> None:
        if not isinstance(self.caption_prompt, str) or not self.caption_prompt.strip():
            raise CheckpointError(f"tasks.caption_prompt must be a non-empty string, got {self.caption_prompt!r}")
        for name in ("caption_max_length", "caption_num_beams", "vqa_k_test", "answer_max_length", "retrieval_k_test"):
            _int(self, name)
        _int(self, "caption_min_length", minimum=0)
        if self.caption_min_length > self.caption_max_length:
            raise CheckpointError(f"tasks.caption_min_length {self.caption_min_length} exceeds tasks.caption_max_length {self.caption_max_length}")


def tasks_from_yaml(yaml: dict[str, Any], layout: str) -> TaskConfig:
    """The task settings an official yaml sets; `k_test` means VQA's or retrieval's by the layout."""
    keys = {"prompt": "caption_prompt", "max_length": "caption_max_length", "min_length": "caption_min_length",
            "num_beams": "caption_num_beams"}  # fmt: skip
    values = {ours: yaml[theirs] for theirs, ours in keys.items() if theirs in yaml}
    if "k_test" in yaml and layout in ("vqa", "retrieval"):
        values[f"{layout}_k_test"] = int(yaml["k_test"])
    return TaskConfig(**values)


@dataclass(frozen=True)
class ModelConfig:
    """A whole X-VLM: vision + text + the heads its checkpoint carries."""

    vision: VisionConfig = field(default_factory=SwinConfig)
    text: TextConfig = field(default_factory=TextConfig)
    heads: tuple[str, ...] = LAYOUT_HEADS["pretrain"]
    embed_dim: int = 256  # ITC projection width
    temp: float = 0.07  # ITC temperature at initialisation
    max_tokens: int = 40
    check_threshold: float = 0.5  # ITM probability above which `check` says "true"
    tasks: TaskConfig = field(default_factory=TaskConfig)
    box_head: str = "cls"  # one of BOX_HEADS; "cls" is the official one, and the only one official checkpoints have

    def __post_init__(self) -> None:
        if not isinstance(self.vision, (SwinConfig, ClipVitConfig)) or not isinstance(self.text, TextConfig):
            raise CheckpointError(f"vision and text must be config objects, got {type(self.vision).__name__}, {type(self.text).__name__}")
        if not isinstance(self.tasks, TaskConfig):
            raise CheckpointError(f"tasks must be a TaskConfig, got {type(self.tasks).__name__}")
        if not isinstance(self.heads, tuple) or not self.heads or not all(isinstance(h, str) for h in self.heads):
            raise CheckpointError(f"heads must be a non-empty list of head names, got {self.heads!r}")
        unknown = set(self.heads) - set(HEADS)
        if unknown:
            raise CheckpointError(f"unknown heads {sorted(unknown)}; known heads are {list(HEADS)}")
        if len(set(self.heads)) != len(self.heads):
            raise CheckpointError(f"heads {list(self.heads)} name a head twice")
        if self.box_head not in BOX_HEADS:
            raise CheckpointError(f"unknown box_head {self.box_head!r}; known box heads are {list(BOX_HEADS)}")
        _int(self, "embed_dim")
        _int(self, "max_tokens", minimum=2)  # [CLS] and at least one piece
        _real(self, "temp")
        if isinstance(self.check_threshold, bool) or not isinstance(self.check_threshold, (int, float)) or not 0 <= self.check_threshold <= 1:
            raise CheckpointError(f"check_threshold must be a probability in [0, 1], got {self.check_threshold!r}")

    @property
    def vqa_decoder_layers(self) -> int:
        """The answer decoder is a copy of the fusion layers (the official code asserts `num_dec_layers` equal)."""
        return self.text.num_layers - self.text.fusion_layer

    @property
    def has_text_encoder(self) -> bool:
        """Every head but captioning reads the text encoder; the official captioning layout has none."""
        return bool(set(self.heads) - {"caption"})

    def with_heads(self, heads: tuple[str, ...]) -> ModelConfig:
        return dataclasses.replace(self, heads=tuple(heads))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        data = dict(_mapping(data, "the model config"))
        vision = dict(_mapping(data.pop("vision", {}), "vision"))
        kind = vision.get("kind", "swin")
        vision_cls = {"swin": SwinConfig, "clip_vit": ClipVitConfig}.get(kind) if isinstance(kind, str) else None
        if vision_cls is None:
            raise CheckpointError(f"unknown vision.kind {kind!r}; expected 'swin' or 'clip_vit'")
        return _build(
            cls,
            {
                **data,
                "vision": _build(vision_cls, vision),
                "text": _build(TextConfig, _mapping(data.pop("text", {}), "text")),
                "tasks": _build(TaskConfig, _mapping(data.pop("tasks", {}), "tasks")),
            },
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read model config {path}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}", hint=exc.hint or "fix the field, or re-convert the checkpoint") from exc


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    tuples = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
    values = dict(data)
    for key in tuples & set(values):
        if not isinstance(values[key], (list, tuple)):
            raise CheckpointError(f"{_FIELD_PREFIX.get(cls, '')}{key} must be a list, got {values[key]!r}")
        values[key] = tuple(values[key])
    return cls(**values)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{what} must be a JSON object, got {type(value).__name__} {value!r:.60}")
    return value


# -- field checks (the message names the field as config.json spells it) --------------------------------------


def _prefix(obj: Any) -> str:
    return _FIELD_PREFIX.get(type(obj), "")


def _int(obj: Any, name: str, *, minimum: int = 1) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise CheckpointError(f"{_prefix(obj)}{name} must be {wanted}, got {value!r}")


def _ints(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, tuple) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise CheckpointError(f"{_prefix(obj)}{name} must be a non-empty list of positive integers, got {value!r}")


def _real(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{_prefix(obj)}{name} must be a positive number, got {value!r}")


def _act(obj: Any) -> None:
    if obj.hidden_act not in HIDDEN_ACTS:
        raise CheckpointError(f"{_prefix(obj)}hidden_act {obj.hidden_act!r} is unknown; known: {list(HIDDEN_ACTS)}")


def _kind(obj: Any, kind: str) -> None:
    if obj.kind != kind:
        raise CheckpointError(f"vision.kind of a {type(obj).__name__} must be {kind!r}, got {obj.kind!r}")


_FIELD_PREFIX: dict[type, str] = {SwinConfig: "vision.", ClipVitConfig: "vision.", TextConfig: "text.", TaskConfig: "tasks."}


_SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))

PRESETS: dict[str, ModelConfig] = {
    # X-VLM base, Swin-B, pretrained on 4M images at 224 (configs/Pretrain_XVLM_base_4m.yaml).
    "xvlm-base-4m-224": ModelConfig(vision=SwinConfig(image_res=224, window_size=7, **_SWIN_B)),
    # X-VLM base, Swin-B at 384: the resolution of every official fine-tuned checkpoint.
    "xvlm-base-16m-384": ModelConfig(vision=SwinConfig(image_res=384, window_size=12, **_SWIN_B)),
    # X-VLM base with the CLIP ViT-B/16 image encoder (configs/config_clipvitB.json).
    "clip-vit-b16": ModelConfig(vision=ClipVitConfig()),
    # A small model for the embedded default and for tests: same architecture, tiny widths. Swin-T's first three
    # stages (2-2-6), not four: at 128 px the final grid is 8 x 8, so a 13-28 px object covers cells of its own
    # instead of sharing a 32 px cell with its neighbours (training/README.md measures the difference).
    "tiny": ModelConfig(
        vision=SwinConfig(image_res=128, embed_dim=32, depths=(2, 2, 6), num_heads=(1, 2, 4), window_size=4, ape=True),
        text=TextConfig(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, fusion_layer=2),
        embed_dim=64,
    ),
}


def get_preset(name: str, heads: tuple[str, ...] | None = None) -> ModelConfig:
    """A named preset, optionally with another set of heads (an official layout's, say)."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown preset {name!r}; available: {sorted(PRESETS)}") from None
    return config if heads is None else config.with_heads(heads)
