"""Visual grounding: the bbox head's box for each phrase, mapped back to the original image and clipped to it.

Many phrases of one image read that image's K/V through the fusion graph's index: the image is encoded
and projected once per call, whatever the number of phrases (`TEXT_CHUNK` phrases per call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xvlm_edge.graphs import TEXT_CHUNK
from xvlm_edge.runtime import Runtime
from xvlm_edge.tasks.batching import gather_images, row_chunks, trim


@dataclass
class Box:
    """The box of one phrase.

    xyxy: [x1, y1, x2, y2] in pixels of the original image, clipped to it (0 <= x1 <= x2 <= width, same for y).
    cxcywh: the same (clipped) box normalised by the image's width and height: (cx, cy, w, h) in [0, 1].
    clipped: whether the predicted box reached past the image and was cut to it.
    raw_cxcywh: the bbox head's output as predicted, before clipping (sigmoid (cx, cy, w, h) of the resized
    image, the official `predict_bbox`); equal to `cxcywh` unless `clipped`.
    """

    text: str
    xyxy: list[float]
    cxcywh: list[float]
    clipped: bool
    raw_cxcywh: list[float]


def ground_phrases(
    runtime: Runtime,
    image_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    text_atts: torch.Tensor,
    image_index: torch.Tensor,
    sizes: list[tuple[int, int]],
    texts: list[str],
    chunk: int = TEXT_CHUNK,
) -> list[Box]:
    """Boxes of K phrases; phrase k is on image `image_index[k]` of B encoded images of (width, height) `sizes`."""
    predicted = []
    for rows in row_chunks(image_index, chunk):
        ids, atts = trim(text_ids[rows], text_atts[rows])
        embeds = runtime.text(ids, atts).text_embeds
        images, index = gather_images(image_embeds, image_index[rows])
        predicted.append(runtime.fusion(embeds, atts, images, index).bbox.cpu())  # (k, 4) sigmoid cxcywh
    boxes = torch.cat(predicted).double()
    return [to_box(texts[k], box, *sizes[int(image_index[k])]) for k, box in enumerate(boxes)]


def to_box(text: str, cxcywh: torch.Tensor, width: int, height: int) -> Box:
    """A `Box` from the head's normalised (cx, cy, w, h) (4,) on a (width, height) image, clipped to the image."""
    x, y, w, h = to_original_xywh(cxcywh, width, height).tolist()
    x1, y1, x2, y2 = x, y, x + w, y + h
    raw = cxcywh.tolist()
    if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
        return Box(text, [x1, y1, x2, y2], raw, False, raw)
    x1, x2 = (min(max(v, 0.0), float(width)) for v in (x1, x2))
    y1, y2 = (min(max(v, 0.0), float(height)) for v in (y1, y2))
    normalised = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
    return Box(text, [x1, y1, x2, y2], normalised, True, raw)


def to_original_xywh(cxcywh: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The official `grounding_eval_bbox` mapping: normalised (cx, cy, w, h) of the squashed image ->
    [x, y, w, h] pixels of the original (W, H) image. (..., 4) float64."""
    scale = cxcywh.new_tensor([width, height, width, height], dtype=torch.float64)
    coord = cxcywh.double() * scale
    return torch.cat([coord[..., :2] - coord[..., 2:] / 2, coord[..., 2:]], dim=-1)
