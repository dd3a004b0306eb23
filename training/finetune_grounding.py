"""Stage 3 of the staged recipe: the attend box head learns, on whole scenes, which of its candidates a phrase names.

    python -m training.pretrain_vision --recipe training/recipes/tiny_synthetic.yaml --out runs/tiny_vision
    python -m training.train --recipe training/recipes/tiny_synthetic.yaml
    python -m training.finetune_grounding --recipe training/recipes/tiny_synthetic.yaml --out runs/tiny_grounding

Why: X-VLM fine-tunes its box head for grounding after pretraining, on the task as it is served. After stage 2
the embedded model's strongest patch was on an object of the right kind for most phrases, but it could not pick
among several: 0.38 of the held-out phrases with a superlative or relation ("the leftmost cyan triangle") were
grounded, against 0.82 of the rest (150 scenes of the generator's evaluation seed, 470 phrases), and the head
had seen whole scenes in only half its region samples. Here the model turns into `box_head: attend_position`
(`models/box_head.py`: the phrase also chooses a direction on the grid, zero at first, so the stage starts
from stage 2's boxes exactly) and only the box head trains, on whole scenes photographed as in stage 2, against
the box losses of stage 2 (L1, GIoU, the attention mass on the object).

Everything below the head is frozen, so each sample's patches and phrase vectors are computed once, and the
steps then cost microseconds of the head alone: minutes in all, inside the recipe's 120-minute budget. The same
RNG seeds give the same samples, order and weights. Measured results are in training/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from training import data as D
from training import train as T
from training.losses import attention_mass_loss, bbox_losses
from xvlm_edge.checkpoint import GATE_IMAGES_DIR, Checkpoint, load_directory, save
from xvlm_edge.models.xvlm import XVLM

#: The box head this stage turns the model into (xvlm_edge.config.BOX_HEADS).
BOX_HEAD = "attend_position"


@dataclass
class Features:
    """The frozen model's view of the region samples: per image its patches, per phrase its vector and target."""

    patches: torch.Tensor  # (B, N, width)
    phrase: torch.Tensor  # (K, hidden)
    index: torch.Tensor  # (K,) image of each phrase
    target: torch.Tensor  # (K, 4) normalised cxcywh
    mask: torch.Tensor  # (K, N) the target box's patches


def grounded_model(stage2: XVLM) -> XVLM:
    """A copy of the stage-2 model with the `attend_position` box head: every stage-2 weight, and a zero direction."""
    if stage2.config.box_head != "attend":
        raise SystemExit(f"the grounding stage starts from an `attend` box head; this model has {stage2.config.box_head!r}")
    model = XVLM(dataclasses.replace(stage2.config, box_head=BOX_HEAD))
    missing, unexpected = model.load_state_dict(stage2.state_dict(), strict=False)
    if unexpected or any(not k.startswith("bbox_head.position.") for k in missing):
        raise SystemExit(f"the stage-2 weights do not fit the grounding model: missing {missing}, unexpected {unexpected}")
    return model.eval()


def region_samples(recipe: T.TrainRecipe, tokenizer, model: XVLM, seed: int) -> ConcatDataset:
    """Stage 2's region/object datasets, every sample a whole scene (as `ground` sees it), photographed alike."""
    d, root = recipe.data, Path(recipe.data.train_dir)
    text = D.TextConfig(max_words=d.max_words, max_tokens=d.max_tokens)
    parts = [
        D.RegionTextDataset(root / name, tokenizer, image_res=model.config.vision.image_res, patch_size=model.config.vision.box_patch_size,
                            text=text, seed=seed + i, augment=False, max_regions=d.max_regions, min_perc_in_image=d.min_perc_in_image,
                            camera=d.camera, whole_image=1.0)  # fmt: skip
        for i, name in enumerate(d.regions)
    ]
    return ConcatDataset(parts)


@torch.no_grad()
def frozen_features(model: XVLM, dataset, indices: Sequence[int], batch: int = 64, progress: bool = True) -> Features:
    """Encode the samples `indices` of `dataset` once: their patches, and the phrase vector of each box text."""
    head, parts, offset = model.bbox_head, [], 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="grounding features", unit="scene")
    for start in range(0, len(indices), batch):
        b = D.collate([dataset[int(i)] for i in indices[start : start + batch]])
        keep = b["is_image"] == 0  # whole-image captions carry no box
        ids, atts, index = b["text_ids"][keep], b["text_atts"][keep], b["idx_to_group_img"][keep]
        full = model.encode_image(b["images"])
        cross = model.fuse(model.encode_text(ids, atts), atts, model.image_context(full, index=index))
        parts.append((full[:, 1:], head.summarize(cross, atts), index + offset, b["target_bbox"][keep], b["image_atts"][keep, 1:]))
        offset += len(b["images"])
        if bar is not None:
            bar.update(len(b["images"]))
    if bar is not None:
        bar.close()
    return Features(*(torch.cat(column) for column in zip(*parts)))


def fit_head(model: XVLM, features: Features, *, steps: int, batch: int, lr: float, position_lr: float, seed: int,
             weights: T.LossRecipe, progress: bool = True) -> list[dict]:  # fmt: skip
    """Train the box head alone on `features` (AdamW, cosine); the position direction at its own learning rate."""
    head = model.bbox_head
    direction = list(head.position.parameters())
    rest = [p for n, p in head.named_parameters() if not n.startswith("position.")]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": lr}, {"params": direction, "lr": position_lr}], weight_decay=0.0)
    base = [lr, position_lr]
    schedule = T.OptimRecipe(lr=1.0, warmup_steps=min(100, steps // 10), schedule="cosine", min_lr_ratio=0.05)
    generator = torch.Generator().manual_seed(seed)
    history, bar = [], None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="grounding stage", unit="step")
    head.train()
    for step in range(steps):
        scale = T.get_lr(step, schedule, steps)
        for group, value in zip(optimizer.param_groups, base):
            group["lr"] = value * scale
        rows = torch.randint(0, len(features.phrase), (batch,), generator=generator)
        images, index = features.index[rows].unique(return_inverse=True)  # project only this batch's images
        phrase, patches = features.phrase[rows], features.patches[images]
        attention = head.weigh(phrase, patches, index)
        l1, giou = bbox_losses(head.box(phrase, attention, patches[index]), features.target[rows])
        mass = attention_mass_loss(attention, features.mask[rows])
        loss = weights.bbox * l1 + weights.giou * giou + weights.attend * mass
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 500 == 0 or step + 1 == steps:
            history.append({"step": step + 1, "loss": loss.item(), "l1": l1.item(), "giou": giou.item(), "attend": mass.item()})
    if bar is not None:
        bar.close()
    head.eval()
    return history


def served_grounding(model: XVLM, tokenizer, root: Path, scenes: int) -> dict:
    """Acc@0.5 of `Model.ground` on the first `scenes` scenes of `root` (the public path, as `training.evaluate`)."""
    from training.evaluate import _by_image, grounding, read_jsonl
    from xvlm_edge.api import Model
    from xvlm_edge.runtime import create_runtime

    records = read_jsonl(root / "regions.jsonl")
    names = sorted({r["image"] for r in records})[:scenes]
    served = Model(Checkpoint(model, tokenizer, model.config), create_runtime(model))
    return grounding(served, root, _by_image(records, names))


def finetune(recipe: T.TrainRecipe, out: Path, *, samples: int, steps: int, batch: int, lr: float, position_lr: float,
             seed: int, eval_scenes: int, progress: bool = True) -> dict:  # fmt: skip
    """Stage 3 from stage 2's `recipe.out/model`: write OUT/model and OUT/metrics.json."""
    torch.manual_seed(seed)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    source = Path(recipe.out) / "model"
    if not (source / "config.json").is_file():
        raise SystemExit(f"{source}: no stage-2 model there; `python -m training.train --recipe ...` writes it")
    stage2 = load_directory(source)
    model, tokenizer = grounded_model(stage2.model), stage2.tokenizer
    start = time.perf_counter()
    dataset = region_samples(recipe, tokenizer, model, seed)
    indices = np.random.default_rng(seed).permutation(len(dataset))[:samples]
    features = frozen_features(model, dataset, indices, progress=progress)
    seconds_features = time.perf_counter() - start
    calibration = Path(recipe.data.calibration_dir)
    held_out = calibration.is_dir() and (calibration / "regions.jsonl").is_file() and eval_scenes > 0
    before = served_grounding(model, tokenizer, calibration, eval_scenes) if held_out else None
    history = fit_head(model, features, steps=steps, batch=batch, lr=lr, position_lr=position_lr, seed=seed,
                       weights=recipe.loss, progress=progress)  # fmt: skip
    after = served_grounding(model, tokenizer, calibration, eval_scenes) if held_out else None
    gates = sorted((source / GATE_IMAGES_DIR).glob("*")) if (source / GATE_IMAGES_DIR).is_dir() else []
    save(Checkpoint(model, tokenizer, model.config), out / "model", gate_images=gates)
    metrics = {
        "source": str(source), "samples": len(indices), "phrases": len(features.phrase), "steps": steps,
        "seconds_features": seconds_features, "seconds": time.perf_counter() - start,
        "held_out": {"dir": str(calibration), "scenes": eval_scenes, "before": before, "after": after} if held_out else None,
        "history": history,
    }  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.finetune_grounding", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", required=True, help="the stage-2 recipe: its `out`/model is the starting point")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--samples", type=int, default=24000, help="whole-scene region samples encoded once")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=256, help="phrases per step")
    parser.add_argument("--lr", type=float, default=3e-4, help="the box head's learning rate")
    parser.add_argument("--position-lr", type=float, default=3e-2, help="the direction's: it starts at zero, far from its scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-scenes", type=int, default=300, help="held-out calibration scenes grounded before and after")
    args, overrides = parser.parse_known_args(argv)
    recipe = T.load_recipe(args.recipe, overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = finetune(recipe, args.out, samples=args.samples, steps=args.steps, batch=args.batch_size, lr=args.lr,
                       position_lr=args.position_lr, seed=args.seed, eval_scenes=args.eval_scenes, progress=recipe.progress)  # fmt: skip
    held = metrics["held_out"]
    summary = f", held-out grounding {held['before']['acc_iou50']:.3f} -> {held['after']['acc_iou50']:.3f}" if held else ""
    print(f"grounding stage: {metrics['phrases']} phrases, {args.steps} steps in {metrics['seconds']:.0f} s{summary}; "
          f"model written to {args.out / 'model'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
