"""X-VLM pretraining: one readable loop, on one CPU process or many GPUs under torchrun.

    python -m training.train --recipe training/recipes/tiny_synthetic.yaml [--export int8] [--key=value ...]
    torchrun --nproc_per_node 2 -m training.train --recipe ... --out=runs/x

`--export int8` (or fp32) leaves a gated ONNX Runtime export of the finished model beside it
(`<out>/model/export/onnxruntime-int8/`, `xvlm_edge.export.export_model`); a refused gate ends the run with
the gate's numbers, the checkpoint itself is kept.

The schedule is the official `Pretrain.py`: every step is one image-text batch, and before it, with
probability `regions_iter_perc`, one region batch (its own optimizer step). Both steps use the LR of the
step counter, a pure function of it (linear warmup, then linear or cosine decay), so resuming needs only
the step. Distributed: DDP from torchrun's RANK/WORLD_SIZE (gloo on CPU, nccl on GPU); only rank 0 logs
and saves; the global batch is fixed by the recipe and split into world_size x grad_accum micro-batches.

Resume is exact: a checkpoint is the model directory `step-NNNNNN/` (`xvlm_edge.checkpoint.save`,
safetensors) plus `train_state.pt` (optimizer, scaler, step, every rank's RNG states and the data
position), written atomically; `train_state.pt` is written last and is the commit point. A run killed at
any moment resumes from the last committed step and continues bit-identically on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import typing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader

from training import data as D
from training import losses
from xvlm_edge.checkpoint import Checkpoint, load_directory, save
from xvlm_edge.config import ModelConfig, get_preset
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.tokenizer import Tokenizer

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
#: Test hook, never set in real runs: "<where>:<step>" kills this process with SIGKILL at that point of the
#: checkpoint of that step (`model`: after the model directory, before the state; `state`: half-way
#: through writing the state file), so tests can prove a kill during a save leaves the last checkpoint intact.
FAULT_ENV = "XVLM_TRAIN_FAULT"
TEMP_RANGE = (0.001, 0.5)  # the ITC temperature's bounds, official


# -- the recipe: a typed dataclass tree --------------------------------------------------------------------


@dataclass
class ModelRecipe:
    preset: str = "tiny"
    heads: tuple[str, ...] = ("itc", "itm", "mlm", "bbox")
    image_res: int = 0  # 0: the preset's
    init_std: float = 0.02  # BERT/Swin's N(0, 0.02); training/README.md has what wider inits did to the tiny model
    box_head: str = "cls"  # xvlm_edge.config.BOX_HEADS; "attend" for a model trained from scratch (README)
    init: str = ""  # a checkpoint directory whose matching weights start the run (an earlier stage); "" : init_std


@dataclass
class DataRecipe:
    train_dir: str = "data/synth-train"
    vocab: str = "synthetic"  # "synthetic" (training.synthetic.build_vocab) or a vocab.txt path
    generate_scenes: int = 0  # > 0: rank 0 renders this many synthetic scenes into train_dir if it is empty
    generate_seed: int = 0
    captions: str = "captions.jsonl"
    regions: tuple[str, ...] = ("regions.jsonl", "objects.jsonl")  # () trains image-caption only
    max_words: int = 40
    max_tokens: int = 40
    mask_prob: float = 0.25
    max_masks: int = 8
    skipgram_prb: float = 0.2
    skipgram_size: int = 3
    max_regions: int = 5
    min_perc_in_image: float = 0.5
    # probability that a region sample is the whole image, as the tasks see it, instead of the official random
    # crop around a box (which zooms objects ~2x on average and distorts their aspect)
    region_whole_image: float = 0.0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    augment: bool = True
    camera: float = 0.0  # probability of photographing a sample with a desk lamp's camera (training/camera.py)
    num_workers: int = 0
    # Multi-task pretraining (`SceneTaskDataset`): with both set, every image-text batch also trains captioning,
    # VQA and `check` on its images; "" trains the pretraining losses only.
    vqa: str = ""
    check: str = ""
    answer_tokens: int = 8  # [CLS] answer [SEP] padded to this many tokens
    # `check_threshold` is calibrated at the end of the run on `calibration_scenes` scenes of `calibration_seed`
    # (rendered into `calibration_dir` if it is empty); 0 scenes keeps the config's threshold.
    calibration_dir: str = "data/synth-calib"
    calibration_scenes: int = 0
    calibration_seed: int = 2


@dataclass
class LossRecipe:
    itc: float = 1.0
    itm: float = 1.0
    mlm: float = 1.0
    bbox: float = 1.0
    giou: float = 1.0
    attend: float = 0.0  # the attend box head's attention mass on the named object (losses.attention_mass_loss)
    caption: float = 0.0  # the scene-task weights (need data.vqa and data.check)
    vqa: float = 0.0
    check: float = 0.0
    caption_label_smoothing: float = 0.1  # official captioning yaml
    regions_iter_perc: float = 0.5  # official `regions.iter_perc`: chance of a region step before each step


@dataclass
class OptimRecipe:
    lr: float = 1e-4
    weight_decay: float = 0.01
    lr_mult: float = 2.0  # official: newly initialised parts train at lr * lr_mult
    lr_mult_params: tuple[str, ...] = ("crossattention", "vision_proj", "text_proj", "temp", "itm_head", "bbox_head")
    no_decay: tuple[str, ...] = ("bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
                                 "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight")  # fmt: skip
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = "linear"  # "linear" (official) or "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 disables


@dataclass
class TrainRecipe:
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    out: str = "runs/tiny"
    steps: int = 1000
    batch_size: int = 32  # images per image-text step, over all ranks and accumulation steps
    region_batch_size: int = 16  # images per region step (each with up to max_regions + 1 texts)
    micro_batch_size: int = 0  # images per rank per forward; 0: the whole per-rank batch at once
    seed: int = 42
    precision: str = "fp32"  # fp32 | bf16 | fp16 (the last two on CUDA only)
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    threads: int = 0  # torch.set_num_threads per process; 0 leaves the default
    progress: bool = True
    export: str = ""  # "int8" | "fp32": export the final model for ONNX Runtime (gated for int8); "" exports nothing


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SystemExit(f"recipe: {name} must be a mapping")
        return _build(tp, value, name)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        args = typing.get_args(tp)
        item_type = args[0]
        return tuple(_coerce(item_type, v, f"{name}[]") for v in items)
    if tp is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"recipe: {name} must be true or false, got {value!r}")
            return value.lower() in ("true", "1")
        return bool(value)
    try:
        return tp(value)
    except (TypeError, ValueError):
        raise SystemExit(f"recipe: {name} must be {tp.__name__}, got {value!r}") from None


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise SystemExit(f"recipe: unknown key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(known)}")
    return cls(**{k: _coerce(hints[k], v, prefix + k) for k, v in values.items()})


def load_recipe(path: str | None, overrides: list[str]) -> TrainRecipe:
    """The YAML recipe with `--a.b=value` overrides applied; unknown keys and bad values are errors."""
    values: dict = yaml.safe_load(Path(path).read_text()) if path else {}
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise SystemExit(f"override {item!r} must look like --key=value (e.g. --optim.lr=3e-4)")
        key, value = item[2:].split("=", 1)
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value) if value else value
    return _build(TrainRecipe, values or {})


# -- pure functions of the recipe ---------------------------------------------------------------------------


def get_lr(step: int, optim: OptimRecipe, total_steps: int) -> float:
    """Official linear warmup from 0, then linear (official) or cosine decay to min_lr_ratio * lr."""
    if step < optim.warmup_steps:
        return optim.lr * step / max(1, optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
    decay = 1.0 - progress if optim.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.lr * (optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * decay)


def takes_region_step(step: int, recipe: TrainRecipe) -> bool:
    """The official coin flip before each step, drawn from (seed, step) so a resumed run flips the same."""
    if not recipe.data.regions or recipe.loss.regions_iter_perc <= 0:
        return False
    return bool(np.random.default_rng([recipe.seed, step, 7]).random() < recipe.loss.regions_iter_perc)


def model_config(recipe: TrainRecipe, vocab_size: int) -> ModelConfig:
    config = get_preset(recipe.model.preset, tuple(recipe.model.heads))
    text = dataclasses.replace(config.text, vocab_size=vocab_size)
    vision = config.vision
    if recipe.model.image_res:
        vision = dataclasses.replace(vision, image_res=recipe.model.image_res)
    return dataclasses.replace(config, text=text, vision=vision, max_tokens=recipe.data.max_tokens, box_head=recipe.model.box_head)


def build_tokenizer(recipe: TrainRecipe) -> Tokenizer:
    if recipe.data.vocab == "synthetic":
        from training.synthetic import build_vocab

        return Tokenizer(build_vocab(), source="training.synthetic.build_vocab()")
    return Tokenizer.from_file(recipe.data.vocab)


def init_weights(model: XVLM, std: float = 0.02) -> None:
    """From-scratch init as BERT and Swin do it: N(0, std) (truncated at 2 std) for linear, embedding and
    relative-position weights, zero biases, unit LayerNorms. The package modules keep PyTorch's defaults (they
    are built to be loaded), and N(0, 1) word embeddings tied to the MLM decoder give logits in the tens."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        if name.endswith(("relative_position_bias_table", "class_embedding")):
            nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std)


def build_optimizer(model: nn.Module, optim: OptimRecipe) -> torch.optim.AdamW:
    """Official `create_optimizer`: 4 groups, (decay | no decay) x (base lr | lr * lr_mult)."""
    groups: list[dict[str, Any]] = [
        {"params": [], "weight_decay": optim.weight_decay, "lr_scale": 1.0},
        {"params": [], "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": [], "weight_decay": optim.weight_decay, "lr_scale": optim.lr_mult},
        {"params": [], "weight_decay": 0.0, "lr_scale": optim.lr_mult},
    ]
    for name, param in model.named_parameters():
        if param.requires_grad:
            new = any(part in name for part in optim.lr_mult_params)
            no_decay = any(part in name for part in optim.no_decay)
            groups[2 * new + no_decay]["params"].append(param)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=optim.betas, eps=optim.eps)


# -- data: deterministic streams with a saved position --------------------------------------------------------


class Stream:
    """Global batches of a dataset in a per-epoch permutation of (seed, epoch); `position` = batches consumed.

    Each rank reads its own slice of every global batch, so the samples seen do not depend on the world size,
    and a stream rebuilt at a saved position continues exactly where the old one stopped.
    """

    def __init__(self, dataset, global_batch: int, rank: int, world: int, seed: int, num_texts: int | None, workers: int):
        if global_batch % world:
            raise SystemExit(f"batch size {global_batch} is not divisible by world size {world}")
        self.dataset, self.global_batch, self.rank, self.world, self.seed = dataset, global_batch, rank, world, seed
        self.per_rank = global_batch // world
        self.batches_per_epoch = len(dataset) // global_batch
        if self.batches_per_epoch < 1:
            raise SystemExit(f"{len(dataset)} records cannot fill one batch of {global_batch}")
        self.collate, self.workers = D.make_collate(num_texts), workers
        self.position = 0
        self._iter = None

    def _open(self) -> None:
        epoch, offset = divmod(self.position, self.batches_per_epoch)
        for part in getattr(self.dataset, "datasets", [self.dataset]):
            part.set_epoch(epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        batches = [
            order[b * self.global_batch + self.rank * self.per_rank : b * self.global_batch + (self.rank + 1) * self.per_rank].tolist()
            for b in range(offset, self.batches_per_epoch)
        ]
        # A private generator: DataLoader draws its worker base seed from it, never from the global RNG that the
        # hard-negative sampling uses (else opening an epoch, or resuming, would shift every later draw).
        loader = DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate, num_workers=self.workers,
                            generator=torch.Generator().manual_seed(self.seed))  # fmt: skip
        self._iter = iter(loader)

    def next(self) -> dict[str, torch.Tensor]:
        if self._iter is None:
            self._open()
        try:
            batch = next(self._iter)
        except StopIteration:
            self._open()
            batch = next(self._iter)
        self.position += 1
        if self.position % self.batches_per_epoch == 0:
            self._iter = None  # the next batch opens the next epoch
        return batch

    def seek(self, position: int) -> None:
        self.position, self._iter = position, None


def build_streams(recipe: TrainRecipe, tokenizer: Tokenizer, config: ModelConfig, rank: int, world: int) -> dict[str, Stream]:
    d, root = recipe.data, Path(recipe.data.train_dir)
    text = D.TextConfig(max_words=d.max_words, max_tokens=d.max_tokens, mask_prob=d.mask_prob, max_masks=d.max_masks,
                        skipgram_prb=d.skipgram_prb, skipgram_size=d.skipgram_size)  # fmt: skip
    common = dict(image_res=config.vision.image_res, patch_size=config.vision.box_patch_size, text=text, augment=d.augment,
                  camera=d.camera)  # fmt: skip
    if d.vqa and d.check:
        captions = D.SceneTaskDataset(root / d.captions, tokenizer, vqa=root / d.vqa, check=root / d.check,
                                      prompt=config.tasks.caption_prompt, answer_tokens=d.answer_tokens,
                                      seed=recipe.seed, crop_scale=d.crop_scale, **common)  # fmt: skip
    else:
        captions = D.ImageTextDataset(root / d.captions, tokenizer, seed=recipe.seed, crop_scale=d.crop_scale, **common)
    streams = {"image": Stream(captions, recipe.batch_size, rank, world, recipe.seed, None, d.num_workers)}
    if d.regions:
        parts = [
            D.RegionTextDataset(root / name, tokenizer, seed=recipe.seed + 1 + i, max_regions=d.max_regions,
                                min_perc_in_image=d.min_perc_in_image, whole_image=d.region_whole_image,
                                **common)  # fmt: skip
            for i, name in enumerate(d.regions)
        ]
        regions = ConcatDataset(parts)
        streams["region"] = Stream(regions, recipe.region_batch_size, rank, world, recipe.seed + 1, None, d.num_workers)
    return streams


# -- checkpoints ---------------------------------------------------------------------------------------------


def _fault(where: str, step: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_torch_save(obj: Any, path: Path, step: int) -> None:
    """torch.save to a sibling temp file, fsync, os.replace: readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            if os.environ.get(FAULT_ENV) == f"state:{step}":
                f.truncate(f.tell() // 2)
                f.flush()
                os.fsync(f.fileno())
                _fault("state", step)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state() -> dict[str, Any]:
    state = {
        "python": _py_state_to_tensor(random.getstate()),
        "numpy": _np_state_to_dict(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_py_state_from_tensor(state["python"]))
    np.random.set_state(_np_state_from_dict(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# weights_only=True loads tensors, dicts, lists, ints and strings: RNG states are stored in those terms.
def _py_state_to_tensor(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _py_state_from_tensor(state: dict) -> tuple:
    return state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss"]


def _np_state_to_dict(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _np_state_from_dict(state: dict) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached"]


def save_checkpoint(out: Path, step: int, model: XVLM, tokenizer: Tokenizer, state: dict, keep: int) -> None:
    """Model directory first, then the state file that names it (the commit), then prune old directories."""
    name = f"step-{step:06d}"
    save(Checkpoint(model, tokenizer, model.config), out / name)
    _fault("model", step)
    atomic_torch_save({**state, "model_dir": name}, out / STATE_FILE, step)
    kept = sorted(p for p in out.glob("step-*") if p.is_dir())
    for old in kept[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_state(out: Path) -> dict | None:
    path = out / STATE_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


# -- distributed -----------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return Dist(rank, world, local, device)


def check_in_sync(model: nn.Module, ctx: Dist, step: int) -> None:
    """Every rank must hold bit-identical weights (DDP averages gradients; the optimizer is deterministic)."""
    if ctx.world == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    others = gather_objects(sums, ctx)
    if not all(torch.equal(sums, other) for other in others):
        raise SystemExit(f"ranks diverged by step {step}: DDP replicas hold different weights")


def gather_objects(obj: Any, ctx: Dist) -> list:
    if ctx.world == 1:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


# -- the step ----------------------------------------------------------------------------------------------------


class PretrainStep(nn.Module):
    """What DDP wraps: forward = the weighted pretraining losses of one batch (its parts, detached, for logging).

    An image-text batch that carries scene-task fields (`SceneTaskDataset`) also gets the captioning, VQA and
    `check` losses, on the same image encoding.
    """

    def __init__(self, model: XVLM, weights: LossRecipe, pad_id: int = 0, prompt_length: int = 0) -> None:
        super().__init__()
        self.model, self.weights = model, weights
        self.pad_id, self.prompt_length = pad_id, prompt_length

    def forward(self, batch: dict[str, torch.Tensor], regions: bool) -> tuple[torch.Tensor, dict[str, float]]:
        region_kw = {k: batch[k] for k in ("idx_to_group_img", "image_atts", "target_bbox", "is_image")} if regions else {}
        scene = not regions and "caption_ids" in batch
        if scene:
            region_kw["image_embeds"] = self.model.encode_image(batch["images"])
        parts = losses.pretrain_losses(
            self.model, batch["images"], batch["text_ids"], batch["text_atts"], batch["text_ids_masked"],
            batch["masked_pos"], batch["masked_ids"], **region_kw,
        ).as_dict()  # fmt: skip
        if scene:
            parts.update(losses.scene_task_losses(
                self.model, region_kw["image_embeds"], batch, pad_id=self.pad_id, prompt_length=self.prompt_length,
                label_smoothing=self.weights.caption_label_smoothing,
            ).as_dict())  # fmt: skip
        total = sum(getattr(self.weights, name) * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}


def split(batch: dict[str, torch.Tensor], chunks: int) -> list[dict[str, torch.Tensor]]:
    """Micro-batches of whole images: each keeps its images' texts, with `idx_to_group_img` renumbered."""
    if chunks == 1:
        return [batch]
    images = len(batch["images"])
    if images % chunks:
        raise SystemExit(f"{images} images per rank cannot be split into {chunks} micro-batches")
    size, out = images // chunks, []
    for c in range(chunks):
        rows = (batch["idx_to_group_img"] >= c * size) & (batch["idx_to_group_img"] < (c + 1) * size)
        per_image = ("images", *D.SCENE_FIELDS)  # one row per image, not per text
        micro = {k: v[rows] for k, v in batch.items() if k not in per_image}
        micro["idx_to_group_img"] = micro["idx_to_group_img"] - c * size
        for k in per_image:
            if k in batch:
                micro[k] = batch[k][c * size : (c + 1) * size]
        out.append(micro)
    return out


@torch.no_grad()
def clamp_temperature(model: XVLM) -> None:
    """Keep the learnable ITC temperature in the official range after every step (official `model_pretrain.py`)."""
    if hasattr(model, "temp"):
        model.temp.clamp_(*TEMP_RANGE)


def optimizer_step(
    step_module: nn.Module, model: XVLM, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    batch: dict[str, torch.Tensor], regions: bool, accum: int, lr: float, recipe: TrainRecipe, ctx: Dist, autocast,
) -> dict[str, float]:  # fmt: skip
    """Forward/backward over `accum` micro-batches (DDP syncs only the last), clip, one AdamW step."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    sums: dict[str, torch.Tensor] = {}
    micro_batches = split(batch, accum)
    for i, micro in enumerate(micro_batches):
        micro = {k: v.to(ctx.device, non_blocking=True) for k, v in micro.items()}
        last = i == len(micro_batches) - 1
        sync = nullcontext() if last or not isinstance(step_module, DistributedDataParallel) else step_module.no_sync()
        with sync:
            with autocast:
                loss, parts = step_module(micro, regions)
            scaler.scale(loss / accum).backward()
        for name, value in parts.items():
            sums[name] = sums.get(name, 0) + value.float() / accum
    scaler.unscale_(optimizer)
    clip = recipe.optim.grad_clip if recipe.optim.grad_clip > 0 else math.inf  # the norm is logged either way
    sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).detach()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    clamp_temperature(model)
    values = torch.stack(list(sums.values()))
    if ctx.world > 1:
        dist.all_reduce(values)
        values /= ctx.world
    return dict(zip(sums, values.tolist()))


# -- main ---------------------------------------------------------------------------------------------------------


def train(recipe: TrainRecipe) -> Path:
    if recipe.export not in ("", "fp32", "int8"):
        raise SystemExit(f"--export must be int8 or fp32, not {recipe.export!r}")  # checked before, not after, a run
    ctx = setup_distributed()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    out = Path(recipe.out)
    tokenizer = build_tokenizer(recipe)
    config = model_config(recipe, len(tokenizer))

    if ctx.master:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob(f".{STATE_FILE}.*"), *out.glob(".step-*"), *out.glob(".model.*")]:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()  # a save killed half-way; never read
        root = Path(recipe.data.train_dir)
        if recipe.data.generate_scenes and not (root / recipe.data.captions).is_file():
            from training.synthetic import generate

            print(f"rendering {recipe.data.generate_scenes} synthetic scenes into {root}", file=sys.stderr)
            generate(root, recipe.data.generate_scenes, recipe.data.generate_seed, progress=recipe.progress)
    if ctx.world > 1:
        dist.barrier()

    # Seeds: the model init is the same on every rank; the per-step randomness (hard negatives) is offset per rank.
    torch.manual_seed(recipe.seed)
    model = XVLM(config)
    init_weights(model, recipe.model.init_std)
    if recipe.model.init:
        start_from(model, recipe.model.init)
    model = model.to(ctx.device).train()
    seed = recipe.seed + ctx.rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    optimizer = build_optimizer(model, recipe.optim)
    if recipe.precision not in ("fp32", "bf16", "fp16"):
        raise SystemExit(f"precision must be fp32, bf16 or fp16, not {recipe.precision!r}")
    if recipe.precision != "fp32" and ctx.device.type != "cuda":
        raise SystemExit(f"precision {recipe.precision} needs a CUDA device; use --precision=fp32 on CPU")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[recipe.precision]
    autocast = nullcontext() if dtype is None else torch.autocast(ctx.device.type, dtype=dtype)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=recipe.precision == "fp16")

    streams = build_streams(recipe, tokenizer, config, ctx.rank, ctx.world)
    start = 0
    state = load_state(out)
    if state is not None:  # resume: weights from the committed model directory, the rest from the state file
        weights = load_directory(out / state["model_dir"]).model.state_dict()
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        for name, position in state["data"].items():
            streams[name].seek(position)
        if len(state["rng"]) != ctx.world:
            raise SystemExit(f"checkpoint was written by {len(state['rng'])} ranks; resume with the same world size")
        set_rng_state(state["rng"][ctx.rank])
        start = state["step"]
        if ctx.master:
            _truncate_metrics(out / METRICS_FILE, start)
            print(f"resumed from {out / state['model_dir']} at step {start}", file=sys.stderr)

    prompt_length = len(tokenizer.caption_prompt_ids(config.tasks.caption_prompt))
    step_module: nn.Module = PretrainStep(model, recipe.loss, tokenizer.pad_id, prompt_length)
    if ctx.world > 1:
        # A group of its own for DDP's gradient buckets, so they never interleave with the ITC feature gather.
        group = dist.new_group(backend="nccl" if ctx.device.type == "cuda" else "gloo")
        step_module = DistributedDataParallel(step_module, process_group=group, find_unused_parameters=True)

    micro = recipe.micro_batch_size or recipe.batch_size // ctx.world
    accum = max(1, recipe.batch_size // (ctx.world * micro))
    region_micro = recipe.micro_batch_size or recipe.region_batch_size // ctx.world
    region_accum = max(1, recipe.region_batch_size // (ctx.world * region_micro))
    if ctx.master:
        print(f"world {ctx.world}, batch {recipe.batch_size} = {ctx.world} ranks x {accum} accum x {micro} images; "
              f"{sum(p.numel() for p in model.parameters()):,} parameters", file=sys.stderr)  # fmt: skip
        (out / "recipe.yaml").write_text(yaml.safe_dump(_plain(dataclasses.asdict(recipe)), sort_keys=False))

    bar = None
    if ctx.master and recipe.progress:
        from tqdm import tqdm

        bar = tqdm(total=recipe.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    metrics = (out / METRICS_FILE).open("a") if ctx.master else None
    t0 = time.perf_counter()
    for step in range(start, recipe.steps):
        lr = get_lr(step, recipe.optim, recipe.steps)
        record: dict[str, Any] = {"step": step + 1, "lr": lr}
        if takes_region_step(step, recipe):
            parts = optimizer_step(step_module, model, optimizer, scaler, streams["region"].next(), True,
                                   region_accum, lr, recipe, ctx, autocast)  # fmt: skip
            record.update({f"region_{k}": v for k, v in parts.items()})
        parts = optimizer_step(step_module, model, optimizer, scaler, streams["image"].next(), False,
                               accum, lr, recipe, ctx, autocast)  # fmt: skip
        record.update({f"image_{k}": v for k, v in parts.items()})
        record["loss"] = sum(v for k, v in record.items() if k.startswith(("image_", "region_")) and not k.endswith("grad_norm"))
        if not all(math.isfinite(v) for v in record.values()):
            raise SystemExit(f"non-finite loss at step {step + 1}: {record}")
        if metrics is not None:
            record["elapsed_s"] = round(time.perf_counter() - t0, 3)
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            if bar is not None:
                bar.update(1)
                if (step + 1) % recipe.log_every == 0:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")

        done = step + 1
        if done % recipe.ckpt_every == 0 or done == recipe.steps:
            state = {
                "step": done,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "data": {name: s.position for name, s in streams.items()},
                "rng": gather_objects(rng_state(), ctx),
                "world_size": ctx.world,
            }
            check_in_sync(model, ctx, done)
            if ctx.master:
                save_checkpoint(out, done, model, tokenizer, state, recipe.keep_checkpoints)
            if ctx.world > 1:
                dist.barrier()

    if ctx.master:
        final = out / "model"
        if recipe.steps > start or not final.exists():
            if recipe.data.calibration_scenes and "itm" in config.heads:
                config = calibrate(recipe, model, tokenizer, config)
            save(Checkpoint(model, tokenizer, config), final, gate_images=gate_images(recipe))
        metrics.close()
        if bar is not None:
            bar.close()
        print(f"model written to {final}", file=sys.stderr)
        if recipe.export:
            export_final(final, recipe.export, recipe.threads or None)
    if ctx.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out / "model"


def start_from(model: XVLM, directory: str) -> None:
    """Copy into `model` every weight of checkpoint `directory` whose name and shape match (a staged recipe's
    earlier stage, e.g. a pretrained vision encoder); the rest keeps its initialisation. A checkpoint that
    shares no weight with the model is a mistake, and ends the run."""
    if not (Path(directory) / "config.json").is_file():
        raise SystemExit(f"--model.init {directory}: no checkpoint there; the earlier stage writes it (training/README.md)")
    state = load_directory(directory).model.state_dict()
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise SystemExit(f"--model.init {directory}: no weight of that checkpoint fits this model")
    model.load_state_dict(matched, strict=False)
    print(f"started from {directory}: {len(matched)} of {len(own)} tensors", file=sys.stderr)


def gate_images(recipe: TrainRecipe) -> list[Path]:
    """The held-out calibration scenes an INT8 export of the model is gated on (`GATE_IMAGES_DIR`), if any."""
    from xvlm_edge.export.int8 import EVAL_IMAGES

    folder = Path(recipe.data.calibration_dir) / "images"
    return sorted(folder.glob("*.png"))[:EVAL_IMAGES] if recipe.data.calibration_scenes and folder.is_dir() else []


def calibrate(recipe: TrainRecipe, model: XVLM, tokenizer: Tokenizer, config: ModelConfig) -> ModelConfig:
    """`config` with `check_threshold` set to the best ITM-probability threshold on held-out check statements,
    measured through the public `Model` on the torch runtime: the probabilities, resize and comparison that
    `Model.check` serves."""
    from training.evaluate import calibrate_check_threshold
    from xvlm_edge.api import Model
    from xvlm_edge.runtime import create_runtime

    d, root = recipe.data, Path(recipe.data.calibration_dir)
    if not (root / "check.jsonl").is_file():
        from training.synthetic import generate

        print(f"rendering {d.calibration_scenes} calibration scenes (seed {d.calibration_seed}) into {root}", file=sys.stderr)
        generate(root, d.calibration_scenes, d.calibration_seed)
    model.eval()
    served = Model(Checkpoint(model, tokenizer, config), create_runtime(model))
    threshold, accuracy = calibrate_check_threshold(served, root, num_scenes=d.calibration_scenes)
    model.train()
    print(f"check_threshold {threshold:.4f} (accuracy {accuracy:.4f} on {root})", file=sys.stderr)
    return dataclasses.replace(config, check_threshold=threshold)


def export_final(model_dir: Path, precision: str, threads: int | None) -> None:
    """The finished model's ONNX Runtime export; an INT8 export that fails its accuracy gate ends the run."""
    from xvlm_edge.export import AccuracyGateError, export_model
    from xvlm_edge.manifest import export_dir

    try:
        export_model(model_dir, precision, "onnxruntime", threads=threads, progress=True)
    except AccuracyGateError as error:
        raise SystemExit(f"{model_dir} is saved, but its {precision} export was refused: {error}") from error
    print(f"{precision} export written to {export_dir(model_dir, 'onnxruntime', precision)}", file=sys.stderr)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step (a killed run may have logged steps it never committed)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path = None
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--recipe", "--export") and i + 1 < len(argv):  # the two options that also take a space
            argv[i : i + 2] = [f"{argv[i]}={argv[i + 1]}"]
        if argv[i].startswith("--recipe="):
            recipe_path = argv[i].split("=", 1)[1]
        elif argv[i] in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            rest.append(argv[i])
        i += 1
    train(load_recipe(recipe_path, rest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
