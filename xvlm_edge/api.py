"""The public model object: `xvlm_edge.load(...)` returns a `Model` with one method per task.

It owns what the tasks leave to the caller: decoding images (`preprocess`), the official text cleaning
(`pre_caption` / `pre_question`) and tokenising, checking that the checkpoint has the head a task needs,
and mapping single inputs to single results and lists to lists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xvlm_edge.checkpoint import Checkpoint
from xvlm_edge.config import LAYOUT_HEADS, ModelConfig
from xvlm_edge.errors import BackendUnavailableError, CheckpointError, InputError
from xvlm_edge.graphs import IMAGE_CHUNK, ImageEncoding
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.preprocess import load_image, to_pixel_values
from xvlm_edge.runtime import EXPORTED_PRECISIONS, Runtime, create_runtime
from xvlm_edge.tasks.caption import Caption, generate_captions
from xvlm_edge.tasks.ground import Box, ground_phrases
from xvlm_edge.tasks.match import Verdict, match_probabilities, verdicts
from xvlm_edge.tasks.nlvr import nlvr_logits, nlvr_verdicts
from xvlm_edge.tasks.retrieve import RetrievalScores, retrieval_scores
from xvlm_edge.tasks.vqa import Answer, generate_answers, question_states, rank_answers
from xvlm_edge.text import pre_caption, pre_question
from xvlm_edge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

#: Heads each task needs (`config.heads`), checked before any work.
TASK_HEADS: dict[str, tuple[str, ...]] = {
    "caption": ("caption",),
    "ground": ("bbox",),
    "match": ("itm",),
    "check": ("itm",),
    "retrieve": ("itc", "itm"),
    "answer": ("vqa",),
    "nlvr": ("nlvr",),
}


@dataclass
class Retrieval:
    """The official score matrices plus, per image and per text, the re-ranked candidates best first."""

    scores: RetrievalScores
    texts_for_image: list[list[tuple[int, float]]]
    images_for_text: list[list[tuple[int, float]]]


class Model:
    """An X-VLM checkpoint on a runtime. Methods take image sources (path, bytes, HWC uint8 RGB array or
    PIL image) and raw text; a single input gives a single result, a list gives a list."""

    def __init__(self, checkpoint: Checkpoint, runtime: Runtime) -> None:
        self.checkpoint = checkpoint
        self.runtime = runtime

    @property
    def model(self) -> XVLM:
        """The underlying PyTorch module (on the runtime's device and dtype for the torch backend)."""
        if self.checkpoint.model is None:
            raise BackendUnavailableError(
                f"this model runs exported graphs ({self.runtime.name}); its PyTorch weights were not loaded",
                hint="xvlm_edge.load(path, backend='torch') gives the module",
            )
        return self.checkpoint.model

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.config

    @property
    def tokenizer(self) -> Tokenizer:
        return self.checkpoint.tokenizer

    @property
    def info(self) -> dict[str, Any]:
        """Backend, device and precision actually in use (and, for backend='auto', why)."""
        return {**self.runtime.info, "heads": list(self.config.heads)}

    # -- tasks ---------------------------------------------------------------------------------------------

    def caption(
        self, images: Any, *, num_beams: int | None = None, max_length: int | None = None, min_length: int | None = None
    ) -> Caption | list[Caption]:
        """Caption images; `num_beams=1` is the official greedy decoder, the default the checkpoint's beams."""
        self._require("caption")
        settings = self.config.tasks
        num_beams = settings.caption_num_beams if num_beams is None else num_beams
        max_length = settings.caption_max_length if max_length is None else max_length
        min_length = settings.caption_min_length if min_length is None else min_length
        prompt_length = len(self.tokenizer.caption_prompt_ids(settings.caption_prompt))
        if num_beams < 1 or max_length <= prompt_length:
            raise InputError(f"need num_beams >= 1 and max_length > {prompt_length} prompt tokens; got {num_beams}, {max_length}")
        arrays, single = _as_list(images)
        out = []
        for start in range(0, len(arrays), IMAGE_CHUNK):
            encoded = self._encode_images(arrays[start : start + IMAGE_CHUNK])
            out += generate_captions(
                self.runtime, self.tokenizer, encoded.image_embeds, prompt=settings.caption_prompt,
                max_length=max_length, min_length=min_length, num_beams=num_beams,
            )  # fmt: skip
        return out[0] if single else out

    def ground(self, image: Any, texts: str | Sequence[str]) -> Box | list[Box]:
        """Box of each phrase in one image; all phrases share the image's encoding and K/V."""
        self._require("ground")
        phrases, single = _texts(texts)
        array = load_image(image)
        encoded = self._encode_images([array])
        ids, atts = self._encode_texts([pre_caption(t) for t in phrases])
        height, width = array.shape[:2]
        boxes = ground_phrases(self.runtime, encoded.image_embeds, ids, atts, torch.zeros(len(phrases), dtype=torch.long), [(width, height)], phrases)
        return boxes[0] if single else boxes

    def match(self, image: Any, texts: str | Sequence[str]) -> float | list[float]:
        """ITM probability that each text describes the image."""
        self._require("match")
        probs, single = self._match(image, texts)
        values = [float(p) for p in probs]
        return values[0] if single else values

    def check(self, image: Any, statements: str | Sequence[str]) -> Verdict | list[Verdict]:
        """The homework checker: ITM probability against the checkpoint's `check_threshold`."""
        self._require("check")
        probs, single = self._match(image, statements)
        found = verdicts(probs, self.config.check_threshold)
        return found[0] if single else found

    def retrieve(self, images: Sequence[Any], texts: Sequence[str], k: int | None = None) -> Retrieval:
        """Official retrieval: ITC top-k (k defaults to the checkpoint's k_test) then ITM re-ranking."""
        self._require("retrieve")
        arrays, _ = _as_list(images)
        phrases, _ = _texts(texts)
        k = self.config.tasks.retrieval_k_test if k is None else k
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        embeds, feats = [], []
        for start in range(0, len(arrays), IMAGE_CHUNK):
            encoded = self._encode_images(arrays[start : start + IMAGE_CHUNK])
            embeds.append(encoded.image_embeds)
            feats.append(encoded.image_feat)
        images_encoded = ImageEncoding(torch.cat(embeds), torch.cat(feats))
        ids, atts = self._encode_texts([pre_caption(t) for t in phrases])
        scores = retrieval_scores(self.runtime, images_encoded, self.runtime.text(ids, atts), atts, k)
        return Retrieval(
            scores,
            [scores.ranked_texts(i) for i in range(len(arrays))],
            [scores.ranked_images(t) for t in range(len(phrases))],
        )

    def answer(
        self, images: Any, questions: str | Sequence[str], answers: Sequence[str] | None = None, *, k: int | None = None
    ) -> Answer | list[Answer]:
        """VQA. With `answers`, the official ranking (top k by first-token probability, re-scored); without,
        open-ended greedy generation. One image and several questions, or one question per image."""
        self._require("answer")
        arrays, single_image = _as_list(images)
        asked, single = _texts(questions)
        if single_image:
            index = torch.zeros(len(asked), dtype=torch.long)
        elif len(arrays) == len(asked):
            index = torch.arange(len(asked))
        else:
            raise InputError(f"{len(arrays)} images but {len(asked)} questions; give one question per image or one image")
        encoded = self._encode_images(arrays)
        ids, atts = self._encode_texts([pre_question(q) for q in asked])
        states = question_states(self.runtime, encoded.image_embeds, ids, atts, index)
        if answers is None:
            found = generate_answers(self.runtime, self.tokenizer, states, atts, self.config.tasks.answer_max_length)
        else:
            candidates, _ = _texts(answers)
            coded = self.tokenizer.encode_answers(candidates)
            k = self.config.tasks.vqa_k_test if k is None else k
            top_ids, top_probs = rank_answers(self.runtime, states, atts, coded.input_ids, coded.attention_mask, k, self.tokenizer.pad_id)
            found = []
            for row_ids, row_probs in zip(top_ids, top_probs):
                ranked = [(candidates[int(i)], float(p)) for i, p in zip(row_ids, row_probs)]
                found.append(Answer(ranked[0][0], ranked[0][1], ranked))
        return found[0] if single else found

    def nlvr(self, image0: Any, image1: Any, statements: str | Sequence[str]) -> Verdict | list[Verdict]:
        """NLVR2: whether each statement is true of the image pair (left, right)."""
        self._require("nlvr")
        sentences, single = _texts(statements)
        encoded = self._encode_images([load_image(image0), load_image(image1)])
        ids, atts = self._encode_texts([pre_caption(s) for s in sentences])
        zeros = torch.zeros(len(sentences), dtype=torch.long)
        found = nlvr_verdicts(nlvr_logits(self.runtime, encoded.image_embeds, ids, atts, zeros, zeros + 1))
        return found[0] if single else found

    # -- plumbing --------------------------------------------------------------------------------------------

    def _match(self, image: Any, texts: str | Sequence[str]) -> tuple[torch.Tensor, bool]:
        phrases, single = _texts(texts)
        encoded = self._encode_images([load_image(image)])
        ids, atts = self._encode_texts([pre_caption(t) for t in phrases])
        index = torch.zeros(len(phrases), dtype=torch.long)
        return match_probabilities(self.runtime, encoded.image_embeds, ids, atts, index), single

    def _require(self, task: str) -> None:
        missing = [h for h in TASK_HEADS[task] if h not in self.config.heads]
        if missing:
            layouts = [name for name, heads in LAYOUT_HEADS.items() if set(TASK_HEADS[task]) <= set(heads)]
            raise CheckpointError(
                f"`{task}` needs the {', '.join(missing)} head(s), which this checkpoint lacks "
                f"(it has {', '.join(self.config.heads)}); the official {' or '.join(repr(name) for name in layouts)} "
                "layout carries them",
                hint=f"load a {layouts[0]} checkpoint",
            )

    def _encode_images(self, arrays: list[np.ndarray]) -> ImageEncoding:
        res = self.config.vision.image_res
        pixels = torch.from_numpy(np.stack([to_pixel_values(a, res) for a in arrays]))
        return self.runtime.vision(pixels)

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        coded = self.tokenizer.encode(texts, max_length=self.config.max_tokens)
        return coded.input_ids, coded.attention_mask


def _as_list(images: Any) -> tuple[list[np.ndarray], bool]:
    """Decode one image source or a list/tuple of them; (arrays, whether a single image was given)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no images given")
        return [load_image(i) for i in images], False
    return [load_image(images)], True


def _texts(texts: str | Sequence[str]) -> tuple[list[str], bool]:
    if isinstance(texts, str):
        return [texts], True
    texts = list(texts)
    if not texts:
        raise InputError("no texts given")
    if not all(isinstance(t, str) for t in texts):
        raise InputError("texts must be strings")
    return texts, False


def load(
    path: str | Path | None = None,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: str | None = None,
    threads: int | None = None,
) -> Model:
    """Load a checkpoint (our directory or an official `.th`) onto a runtime; see `xvlm_edge.load`."""
    if path is None:  # the embedded default model (training/recipes/tiny_synthetic.yaml), never downloaded
        from importlib.resources import files

        default = files("xvlm_edge") / "assets" / "default"
        # A Traversable is a real directory for every installed layout we support (wheel, editable, source
        # tree); a zipped package would need extracting, which we refuse rather than half-support.
        if not isinstance(default, Path) or not (default / "model.safetensors").is_file():
            raise CheckpointError(
                f"no embedded default model in this install (looked in {default})",
                hint="reinstall xvlm-edge, or pass a checkpoint: xvlm_edge.load('model_dir' or 'official.th')",
            )
        path = default
    from xvlm_edge.checkpoint import load as load_checkpoint
    from xvlm_edge.checkpoint import load_directory

    model_dir = Path(path) if Path(path).is_dir() else None
    if backend in EXPORTED_PRECISIONS and model_dir is not None:  # the export is the model: no PyTorch weights in memory
        checkpoint = load_directory(model_dir, weights=False)
    else:
        checkpoint = load_checkpoint(path)
    runtime = create_runtime(
        checkpoint.model, backend=backend, precision=precision, device=device, model_dir=model_dir, threads=threads
    )
    return Model(checkpoint, runtime)
