"""The official X-VLM text cleaning (`dataset/utils.py` at cb4fff1), reproduced character for character.

Both functions keep the official quirks on purpose, because the checkpoints were trained on their output:
only runs of two or more whitespace characters are collapsed (a lone tab survives), words are counted by
splitting on single spaces, and `pre_question` neither collapses whitespace nor rejects empty text.
"""

from __future__ import annotations

import re

from xvlm_edge.errors import TextError

_DELETED = re.compile(r"[,.'!?\"()*#:;~]")
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def _clean(text: str) -> str:
    """Lower-case, delete the official punctuation set, turn `-` and `/` into spaces."""
    return _DELETED.sub("", text.lower()).replace("-", " ").replace("/", " ")


def _first_words(text: str, max_words: int) -> str:
    words = text.split(" ")  # single spaces, as official: "a  b" counts an empty word
    return " ".join(words[:max_words]) if len(words) > max_words else text


def pre_caption(text: str, max_words: int = 30) -> str:
    """Normalise a caption, grounding phrase or NLVR2 sentence; raise TextError if nothing is left."""
    caption = _clean(text).replace("<person>", "person")
    caption = _WHITESPACE_RUN.sub(" ", caption).rstrip("\n").strip(" ")
    caption = _first_words(caption, max_words)
    if not caption:
        msg = f"text {text!r} is empty after caption cleaning"
        raise TextError(msg, hint="pass a non-empty caption")
    return caption


def pre_question(text: str, max_words: int = 50) -> str:
    """Normalise a VQA question: like `pre_caption`, but only trailing spaces go and empty text is allowed."""
    return _first_words(_clean(text).rstrip(" "), max_words)
