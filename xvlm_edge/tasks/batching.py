"""How tasks cut their rows into graph calls that fit the catalogue's chunk limits (`graphs.TEXT_CHUNK`, ...).

A TensorRT engine built with the default profiles refuses a call with more rows or images than the limits,
so every task sends at most `TEXT_CHUNK` text rows per text / fusion / multimodal / nlvr call, reading at
most `IMAGE_CHUNK` distinct images. Chunking changes no result: each row is computed on its own, and a row
reads its image's K/V whatever else is in the call (tests compare chunked calls with one unchunked call).
"""

from __future__ import annotations

import torch

from xvlm_edge.graphs import IMAGE_CHUNK, TEXT_CHUNK


def row_chunks(image_index: torch.Tensor, chunk: int = TEXT_CHUNK, max_images: int = IMAGE_CHUNK) -> list[slice]:
    """Consecutive row ranges of at most `chunk` rows that read at most `max_images` distinct images.

    `image_index` is (K,) or (K, m) (NLVR2 rows read two images): row k reads images `image_index[k]`.
    """
    rows = (image_index[:, None] if image_index.dim() == 1 else image_index).tolist()
    out, start, seen = [], 0, set()
    for k, images in enumerate(rows):
        wanted = seen | set(images)
        if k > start and (k - start >= chunk or len(wanted) > max_images):
            out.append(slice(start, k))
            start, wanted = k, set(images)
        seen = wanted
    if rows:
        out.append(slice(start, len(rows)))
    return out


def gather_images(image_embeds: torch.Tensor, *indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The images that `indices` read, and the indices renumbered into them: (embeds (B', S, C), *indices)."""
    flat = torch.cat([index.reshape(-1) for index in indices])
    used, inverse = torch.unique(flat, return_inverse=True)  # sorted
    if len(used) == len(image_embeds):  # every image is read: keep the tensor, no copy
        return (image_embeds, *indices)
    parts = inverse.split([index.numel() for index in indices])
    return (image_embeds[used.to(image_embeds.device)], *(part.view_as(index) for part, index in zip(parts, indices)))


def trim(ids: torch.Tensor, atts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut right-padded rows (ids or embeddings (K, L, ...)) to their longest row: later columns are pads in every row."""
    width = int(atts.sum(1).max())
    return ids[:, :width], atts[:, :width]
