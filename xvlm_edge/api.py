"""The public model object: `xvlm_edge.load(...)` returns a `Model` with one method per task.

It owns what the tasks leave to the caller: checking every argument (type and range, before any work),
decoding images (`preprocess`), the official text cleaning (`pre_caption` / `pre_question`) and tokenising,
checking that the checkpoint has the head a task needs, and mapping single inputs to single results and
lists to lists. Every mistake a caller can make raises an `XVLMEdgeError` subclass that names the argument;
an unexpected failure inside an engine becomes a one-line `EngineError` naming the task (the original
error is chained as its `__cause__`).

Every number a result shows a user is a probability in [0, 1] (`probability`, and `score`, which is the
same number); raw values keep their own names (`Caption.logprob`, `Ranked.logit`, `Box.raw_cxcywh`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from xvlm_edge.checkpoint import Checkpoint
from xvlm_edge.config import LAYOUT_HEADS, ModelConfig
from xvlm_edge.errors import BackendUnavailableError, CheckpointError, EngineError, ImageError, InputError, TextError
from xvlm_edge.graphs import DECODER_ROWS, IMAGE_CHUNK, ImageEncoding
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.preprocess import load_image, to_pixel_values
from xvlm_edge.runtime import BACKENDS, EXPORTED_PRECISIONS, PRECISIONS, Runtime, create_runtime
from xvlm_edge.tasks.caption import Caption, generate_captions
from xvlm_edge.tasks.ground import Box, ground_phrases
from xvlm_edge.tasks.match import Verdict, match_probabilities, verdicts
from xvlm_edge.tasks.nlvr import nlvr_logits, nlvr_verdicts
from xvlm_edge.tasks.retrieve import Ranked, RetrievalScores, encode_texts, retrieval_scores
from xvlm_edge.tasks.vqa import Answer, RankedAnswer, generate_answers, question_states, rank_answers, ranked_answers
from xvlm_edge.text import pre_caption, pre_question
from xvlm_edge.tokenizer import Encoding, Tokenizer

log = logging.getLogger(__name__)

__all__ = ["Answer", "Box", "Caption", "Model", "Ranked", "RankedAnswer", "Retrieval", "Verdict", "default_threads", "load"]

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
    """Official retrieval over I images and T texts.

    scores: the official matrices (`RetrievalScores`: raw ITM logits, -100 outside the re-ranked top k,
    ITC similarities, and the ITM probability of every fused pair).
    texts_for_image[i]: image i's re-ranked texts, best first, as `Ranked(index, probability, logit)`:
    `index` into the texts given, `probability` the ITM match probability in [0, 1], `logit` the raw
    positive ITM logit that orders them (the official score). images_for_text[t]: likewise, text t's images.
    Lists, in input order: a repeated text or image keeps its own entry.
    """

    scores: RetrievalScores
    texts_for_image: list[list[Ranked]]
    images_for_text: list[list[Ranked]]


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _task(name: str) -> Callable[[_Method], _Method]:
    """Run a task method so that an unexpected engine failure (torch's or ONNX Runtime's RuntimeError) becomes
    a one-line EngineError naming the task; our own typed errors pass through unchanged."""

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def run(self: Model, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except RuntimeError as exc:
                lines = str(exc).strip().splitlines() or [type(exc).__name__]
                raise EngineError(
                    f"{name} failed in the {self.runtime.name} runtime: {type(exc).__name__}: {lines[0][:200]}",
                    hint="the full error is chained as this exception's __cause__; please report it with the traceback",
                ) from exc

        return run  # type: ignore[return-value]

    return wrap


class Model:
    """An X-VLM checkpoint on a runtime. Methods take image sources (path, bytes, HWC uint8 RGB array or
    PIL image) and raw text; a single input gives a single result, a list gives a list.

    Long lists are cut into the graph catalogue's chunks (`graphs.TEXT_CHUNK` texts, `IMAGE_CHUNK` images,
    `DECODER_ROWS` decoder rows per call), which changes no result and keeps every call inside the profiles
    of an engine built with the defaults.
    """

    def __init__(self, checkpoint: Checkpoint, runtime: Runtime) -> None:
        self.checkpoint = checkpoint
        self.runtime = runtime
        self._answer_list_coded: Encoding | None = None

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
    def answer_list(self) -> list[str] | None:
        """The checkpoint's VQA answer list (`answer_list.json`), which `answer` ranks by default; None if absent."""
        return self.checkpoint.answer_list

    @property
    def info(self) -> dict[str, Any]:
        """Backend, device, precision and threads actually in use (and, for defaults, why)."""
        return {**self.runtime.info, "heads": list(self.config.heads)}

    # -- tasks ---------------------------------------------------------------------------------------------

    @_task("caption")
    def caption(
        self, images: Any, *, num_beams: int | None = None, max_length: int | None = None, min_length: int | None = None
    ) -> Caption | list[Caption]:
        """Caption images. `num_beams=1` is the official greedy decoder, more is Hugging Face beam search;
        the defaults are the checkpoint's (`config.tasks`). `max_length` counts the prompt's tokens, as the
        official `generate` does, and must leave room for one new token. `min_length` (also counting the
        prompt; at most `max_length`) holds eos back during beam search; the official greedy decoder has no
        minimum, so giving one with `num_beams=1` is refused.

        `Caption.probability` is exp of the decoder's score (see `Caption`); `Caption.truncated` says the
        caption hit `max_length` before eos.
        """
        self._require("caption")
        settings = self.config.tasks
        prompt_length = len(self.tokenizer.caption_prompt_ids(settings.caption_prompt))
        longest = self.config.text.max_position_embeddings
        beams = settings.caption_num_beams if num_beams is None else _integer("num_beams", num_beams, maximum=DECODER_ROWS)
        if max_length is None:
            max_length = settings.caption_max_length
            if not prompt_length < max_length <= longest:
                raise CheckpointError(
                    f"the checkpoint's tasks.caption_max_length {max_length} must exceed the {prompt_length}-token prompt and "
                    f"fit text.max_position_embeddings {longest}",
                    hint="pass max_length=, or fix config.json",
                )
        else:
            max_length = _integer("max_length", max_length, minimum=prompt_length + 1, maximum=longest, why=f"it counts the {prompt_length} prompt tokens")
        if min_length is None:
            min_length = min(settings.caption_min_length, max_length)
        else:
            min_length = _integer("min_length", min_length, minimum=0, maximum=max_length, why=f"at most max_length {max_length}")
            if beams == 1 and min_length > prompt_length:
                raise InputError(
                    f"min_length {min_length} applies to beam search only; greedy decoding (num_beams=1) has no minimum, as the official",
                    hint="drop min_length, or pass num_beams > 1",
                )
        arrays, single = _images(images, "images")
        per_call = max(1, min(IMAGE_CHUNK, DECODER_ROWS // beams))  # decoder rows = images x beams
        out = []
        for start in range(0, len(arrays), per_call):
            encoded = self._encode_images(arrays[start : start + per_call])
            out += generate_captions(
                self.runtime, self.tokenizer, encoded.image_embeds, prompt=settings.caption_prompt,
                max_length=max_length, min_length=min_length, num_beams=beams,
            )  # fmt: skip
        return out[0] if single else out

    @_task("ground")
    def ground(self, image: Any, texts: str | Sequence[str]) -> Box | list[Box]:
        """Box of each phrase in one image, clipped to the image (`Box.clipped` says when it was); all phrases
        share the image's encoding and K/V."""
        self._require("ground")
        phrases, single = _texts(texts, "texts")
        ids, atts = self._encode_texts(_captions(phrases, "texts", single))
        array = _image(image, "image")
        encoded = self._encode_images([array])
        height, width = array.shape[:2]
        index = torch.zeros(len(phrases), dtype=torch.long)
        boxes = ground_phrases(self.runtime, encoded.image_embeds, ids, atts, index, [(width, height)], phrases)
        return boxes[0] if single else boxes

    @_task("match")
    def match(self, image: Any, texts: str | Sequence[str]) -> float | list[float]:
        """ITM probability in [0, 1] that each text describes the image (softmax of the ITM head, class "match")."""
        self._require("match")
        probs, single = self._match(image, texts, "texts")
        values = [float(p) for p in probs]
        return values[0] if single else values

    @_task("check")
    def check(self, image: Any, statements: str | Sequence[str], *, threshold: float | None = None) -> Verdict | list[Verdict]:
        """The homework checker: a statement is true when its ITM probability is at least `threshold`, a
        probability in [0, 1] (default: the checkpoint's calibrated `check_threshold`)."""
        self._require("check")
        threshold = self.config.check_threshold if threshold is None else _probability("threshold", threshold)
        probs, single = self._match(image, statements, "statements")
        found = verdicts(probs, threshold)
        return found[0] if single else found

    @_task("retrieve")
    def retrieve(self, images: Any, texts: str | Sequence[str], k: int | None = None) -> Retrieval:
        """Official retrieval: ITC top-k (k defaults to the checkpoint's k_test) then ITM re-ranking."""
        self._require("retrieve")
        k = self.config.tasks.retrieval_k_test if k is None else _integer("k", k)
        phrases, single_text = _texts(texts, "texts")
        ids, atts = self._encode_texts(_captions(phrases, "texts", single_text))
        arrays, _ = _images(images, "images")
        embeds, feats = [], []
        for start in range(0, len(arrays), IMAGE_CHUNK):
            encoded = self._encode_images(arrays[start : start + IMAGE_CHUNK])
            embeds.append(encoded.image_embeds)
            feats.append(encoded.image_feat)
        images_encoded = ImageEncoding(torch.cat(embeds), torch.cat(feats))
        scores = retrieval_scores(self.runtime, images_encoded, encode_texts(self.runtime, ids, atts), atts, k)
        return Retrieval(
            scores,
            [scores.ranked_texts(i) for i in range(len(arrays))],
            [scores.ranked_images(t) for t in range(len(phrases))],
        )

    @_task("answer")
    def answer(
        self, images: Any, questions: str | Sequence[str], answers: Sequence[str] | None = None, *, k: int | None = None
    ) -> Answer | list[Answer]:
        """VQA: one image and several questions, or one question per image.

        Ranked, as the official model: over `answers`, or when none are given over the checkpoint's
        `answer_list.json`; the `k` (default: the checkpoint's k_test, at most `graphs.DECODER_ROWS`) answers
        with the most probable first token are re-scored, and the largest share wins (see `Answer`,
        `RankedAnswer`). Open-ended greedy generation when there is no list; `k` is then refused.
        """
        self._require("answer")
        asked, single = _texts(questions, "questions")
        cleaned = [pre_question(q) for q in asked]
        empty = next((i for i, q in enumerate(cleaned) if not q.strip()), None)
        if empty is not None:
            raise TextError(f"{_name('questions', empty, single)} {asked[empty]!r} is empty after question cleaning", hint="pass a question")
        candidates, coded = self._candidates(answers)
        if k is not None:
            if candidates is None:
                raise InputError("k ranks candidate answers, but this call generates: no answers given and the checkpoint has no answer_list.json")
            k = _integer("k", k, maximum=DECODER_ROWS, why="graphs.DECODER_ROWS, the decoder rows of one question's candidates")
        else:
            k = self.config.tasks.vqa_k_test
        ids, atts = self._encode_texts(cleaned)
        arrays, single_image = _images(images, "images")
        if not single_image and len(arrays) != len(asked):
            raise InputError(f"{len(arrays)} images but {len(asked)} questions; give one question per image or one image")
        shared = self._encode_images(arrays).image_embeds if single_image else None
        found: list[Answer] = []
        step = len(asked) if single_image else IMAGE_CHUNK
        for start in range(0, len(asked), step):
            rows = slice(start, start + step)
            embeds = shared if shared is not None else self._encode_images(arrays[rows]).image_embeds
            count = len(asked[rows])
            index = torch.zeros(count, dtype=torch.long) if single_image else torch.arange(count)
            states = question_states(self.runtime, embeds, ids[rows], atts[rows], index)
            if candidates is None:
                found += generate_answers(self.runtime, self.tokenizer, states, atts[rows], self.config.tasks.answer_max_length)
            else:
                ranked = rank_answers(self.runtime, states, atts[rows], coded.input_ids, coded.attention_mask, k, self.tokenizer.pad_id)
                found += ranked_answers(candidates, *ranked)
        return found[0] if single else found

    @_task("nlvr")
    def nlvr(self, image0: Any, image1: Any, statements: str | Sequence[str]) -> Verdict | list[Verdict]:
        """NLVR2: whether each statement is true of the image pair (left, right); `Verdict.probability` is the
        probability of "true", and the verdict the official argmax (threshold 0.5)."""
        self._require("nlvr")
        sentences, single = _texts(statements, "statements")
        ids, atts = self._encode_texts(_captions(sentences, "statements", single))
        encoded = self._encode_images([_image(image0, "image0"), _image(image1, "image1")])
        zeros = torch.zeros(len(sentences), dtype=torch.long)
        found = nlvr_verdicts(nlvr_logits(self.runtime, encoded.image_embeds, ids, atts, zeros, zeros + 1))
        return found[0] if single else found

    # -- plumbing --------------------------------------------------------------------------------------------

    def _match(self, image: Any, texts: str | Sequence[str], name: str) -> tuple[torch.Tensor, bool]:
        phrases, single = _texts(texts, name)
        ids, atts = self._encode_texts(_captions(phrases, name, single))
        encoded = self._encode_images([_image(image, "image")])
        index = torch.zeros(len(phrases), dtype=torch.long)
        return match_probabilities(self.runtime, encoded.image_embeds, ids, atts, index), single

    def _candidates(self, answers: Sequence[str] | None) -> tuple[list[str] | None, Encoding | None]:
        """The answers to rank (given, else the checkpoint's list, else None: generate) and their tokens."""
        if answers is not None:
            candidates, _ = _texts(answers, "answers")
            return candidates, self.tokenizer.encode_answers(candidates)
        if self.checkpoint.answer_list is None:
            return None, None
        if self._answer_list_coded is None:  # thousands of answers: tokenised once per model
            self._answer_list_coded = self.tokenizer.encode_answers(self.checkpoint.answer_list)
        return self.checkpoint.answer_list, self._answer_list_coded

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


# -- argument checks: each names the argument, and runs before any work ---------------------------------------


def _integer(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None, why: str = "") -> int:
    """An int (NumPy ints too; not a bool, not a float, not a string) within [minimum, maximum]."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or value < minimum or (maximum is not None and value > maximum):
        wanted = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
        raise InputError(f"{name} must be {wanted}{f' ({why})' if why else ''}, got {value!r}")
    return int(value)


def _probability(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{name} must be a probability from 0 to 1, got {value!r}")
    return float(value)


def _name(name: str, index: int, single: bool) -> str:
    return name if single else f"{name}[{index}]"


def _texts(texts: Any, name: str) -> tuple[list[str], bool]:
    """One string or a non-empty list/tuple of strings; (texts, whether a single string was given)."""
    if isinstance(texts, str):
        _unicode(texts, name)
        return [texts], True
    if not isinstance(texts, (list, tuple)):
        raise TextError(f"{name} must be a string or a list of strings, got {type(texts).__name__} {texts!r:.60}")
    if not texts:
        raise InputError(f"{name} is an empty list: no texts given", hint=f"pass at least one string as {name}")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TextError(f"{name}[{bad}] must be a string, got {type(texts[bad]).__name__} {texts[bad]!r:.60}")
    for i, text in enumerate(texts):
        _unicode(text, f"{name}[{i}]")
    return list(texts), False


def _unicode(text: str, name: str) -> None:
    """Refuse a str that is not valid Unicode (a lone surrogate, as `surrogateescape` leaves undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextError(
            f"{name} is not valid Unicode: a lone surrogate {text[exc.start]!r} at character {exc.start}",
            hint="decode the bytes with errors='replace' first",
        ) from None


def _captions(texts: list[str], name: str, single: bool) -> list[str]:
    """The official caption cleaning of each text; an empty result is refused naming the text."""
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(pre_caption(text))
        except TextError as exc:
            raise TextError(f"{_name(name, i, single)}: {exc}", hint=exc.hint) from None
    return out


def _image(source: Any, name: str) -> np.ndarray:
    """Decode one image source; an ImageError names the argument."""
    if isinstance(source, str) and not source:
        raise ImageError(f"{name} is an empty path")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        raise ImageError(f"{name}: {os.fspath(source)!r} is a directory, not an image file", hint="pass an image file (or list the folder's images)")
    try:
        return load_image(source)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}", hint=exc.hint) from None


def _images(images: Any, name: str) -> tuple[list[np.ndarray], bool]:
    """Decode one image source or a list/tuple of them; (arrays, whether a single image was given)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError(f"{name} is an empty list: no images given")
        return [_image(image, f"{name}[{i}]") for i, image in enumerate(images)], False
    return [_image(images, name)], True


# -- loading ----------------------------------------------------------------------------------------------------


def default_threads() -> tuple[int, str]:
    """The CPU threads `load` uses when the caller names none, and why.

    The CPUs this process may run on (its affinity, and its cgroup's CPU quota) minus the 1-minute load
    average, rounded: the cores the rest of the machine leaves idle. At least 1, and never more than torch's
    current `get_num_threads()` (one per physical core unless the process changed it), so it only ever
    lowers what torch would use.

    Why: decoding is a few hundred small matrix products per caption, and contended threads wait for one
    another at every one of them. On a 2-core box (2 torch threads by default), 16 captions with the
    embedded model took 0.30 s with 1 thread and 0.21 s with 2 when idle, but 0.69 s vs 1.63 s with one
    other busy process and 1.42 s vs 8.48 s with two. The load average counts this process's own recent
    work too, so a busy program may get fewer threads than the machine has; pass `threads=` to decide.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpus()
    if quota is not None:
        usable = min(usable, quota)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = max(1, min(torch.get_num_threads(), usable - math.floor(load + 0.5)))
    return threads, f"default: {usable} usable CPUs, 1-minute load {load:.2f}, torch's count {torch.get_num_threads()}"


def _cgroup_cpus() -> int | None:
    """CPUs allowed by a cgroup v2 `cpu.max` quota (a container's --cpus), rounded up; None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def load(
    path: str | os.PathLike | None = None,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> Model:
    """Load a checkpoint (our directory or an official `.th`) onto a runtime; see `xvlm_edge.load`.

    Every argument is checked before anything is read. `threads` (a positive int) sets the CPU threads:
    torch's process-wide `torch.set_num_threads` for the torch backend, the session's intra-op threads for
    ONNX Runtime (which sets torch's count to 1: `create_runtime` says why). With `threads=None` the count
    is `default_threads()`: the usable CPUs that the 1-minute load average leaves idle, never more than
    torch's current count. For the torch backend that also lowers the process-wide torch thread count when
    the machine is busy (it never raises it); `model.info["threads"]`
    reports the count and `info["threads_reason"]` why.
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path must be a checkpoint directory or an official .th file path, got {type(path).__name__} {path!r:.60}")
    if isinstance(path, str) and not path.strip():
        raise InputError("path is an empty string", hint="pass a checkpoint directory or .th file, or None for the embedded model")
    for name, value, choices in (("backend", backend, ("auto", *BACKENDS)), ("precision", precision, PRECISIONS)):
        if not isinstance(value, str):
            raise InputError(f"{name} must be a string, one of {list(choices)}; got {value!r}")
        if value not in choices:
            raise BackendUnavailableError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise InputError(f"device must be None, a string such as 'cpu' or 'cuda:0', or a torch.device; got {device!r}")
    reason = "asked"
    if threads is not None:
        threads = _integer("threads", threads)
    else:
        threads, reason = default_threads()

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
    runtime.info["threads"] = str(threads)
    runtime.info["threads_reason"] = reason
    runtime.info["torch_threads"] = str(torch.get_num_threads())  # as the runtime left it (create_runtime)
    return Model(checkpoint, runtime)
