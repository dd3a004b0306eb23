"""Visual grounding: the bbox head's box for each phrase, mapped back to the original image.

Many phrases of one image read that image's K/V through the fusion graph's index: the image is encoded
and projected once, whatever the number of phrases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xvlm_edge.runtime import Runtime


@dataclass
class Box:
    """xyxy: [x1, y1, x2, y2] in pixels of the original image; cxcywh: normalised (cx, cy, w, h)."""

    text: str
    xyxy: list[float]
    cxcywh: list[float]


def ground_phrases(
    runtime: Runtime,
    image_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    text_atts: torch.Tensor,
    image_index: torch.Tensor,
    sizes: list[tuple[int, int]],
    texts: list[str],
) -> list[Box]:
    """Boxes of K phrases; phrase k is on image `image_index[k]` of B encoded images of (width, height) `sizes`."""
    embeds = runtime.text(text_ids, text_atts).text_embeds
    boxes = runtime.fusion(embeds, text_atts, image_embeds, image_index).bbox  # (K, 4) sigmoid cxcywh
    out = []
    for k, box in enumerate(boxes.double()):
        width, height = sizes[int(image_index[k])]
        x, y, w, h = to_original_xywh(box, width, height).tolist()
        out.append(Box(texts[k], [x, y, x + w, y + h], box.tolist()))
    return out


def to_original_xywh(cxcywh: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The official `grounding_eval_bbox` mapping: normalised (cx, cy, w, h) of the squashed image ->
    [x, y, w, h] pixels of the original (W, H) image. (..., 4) float64."""
    scale = cxcywh.new_tensor([width, height, width, height], dtype=torch.float64)
    coord = cxcywh.double() * scale
    return torch.cat([coord[..., :2] - coord[..., 2:] / 2, coord[..., 2:]], dim=-1)
