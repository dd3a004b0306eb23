"""WordPiece tokenisation with the official X-VLM conventions, on the Rust `tokenizers` library.

The official code vendors the pure-Python `BertTokenizer` (and uses Hugging Face's for captioning). Both run a
lower-casing, accent-stripping basic tokenizer and greedy longest-match WordPiece; `tokenizers` does the same in
Rust (`BertNormalizer` + `BertPreTokenizer` + `WordPiece`), so a 10,000-character text costs microseconds instead of
a Python loop per character, and no `transformers` install is needed on the device.

What is ours, not the library's, is the official framing: fine-tuning inputs are `[CLS] X` with no `[SEP]`,
captioning uses `[CLS] X [SEP]`, truncation keeps the special tokens, and decoding follows `transformers` 4.12
(`BertTokenizer.decode` with `clean_up_tokenization_spaces=True`). Special ids are looked up in the vocabulary,
never assumed, so shuffled vocabularies work.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import AddedToken, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _RustTokenizer

from xvlm_edge.errors import CheckpointError, InputError, TextError

# The special tokens of BertTokenizer (`all_special_tokens`): split out of raw text before WordPiece and
# dropped by `decode(skip_special_tokens=True)`. `[unusedN]` are ordinary tokens.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_VOCAB = "assets/vocab/bert-base-uncased-vocab.txt"

# transformers 4.12 `PreTrainedTokenizerBase.clean_up_tokenization`, applied in this order.
_CLEANUPS = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip


@dataclass(frozen=True)
class Encoding:
    """A right-padded batch: `input_ids` and `attention_mask` (1 = token, 0 = pad), both int64 (B, L)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class Tokenizer:
    """bert-base-uncased WordPiece with the official X-VLM framing; build with `from_file` or `default`."""

    def __init__(self, vocab: Sequence[str], *, source: str = "<memory>") -> None:
        if not vocab:
            msg = f"vocabulary {source} is empty"
            raise CheckpointError(msg, hint="pass a WordPiece vocab.txt, one token a line")
        ids = {token: i for i, token in enumerate(vocab)}
        if len(ids) != len(vocab):
            msg = f"vocabulary {source} lists a token twice; ids would be ambiguous"
            raise CheckpointError(msg)
        missing = [token for token in SPECIAL_TOKENS if token not in ids]
        if missing:
            msg = f"vocabulary {source} lacks the special tokens {missing}"
            raise CheckpointError(msg)
        self._tokens = tuple(vocab)
        self._ids = ids
        self._special_ids = frozenset(ids[token] for token in SPECIAL_TOKENS)
        rust = _RustTokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None follows lowercase, as BertTokenizer(do_lower_case=True) does.
        rust.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # Matched case-sensitively in the raw text, like transformers' no-split tokens: "red[SEP]" -> red, [SEP].
        rust.add_special_tokens([AddedToken(token, normalized=False) for token in SPECIAL_TOKENS])
        self._rust = rust

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a vocab.txt: one token per line, id = line index (as transformers' `load_vocab`)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            msg = f"cannot read vocabulary {path}: {e}"
            raise CheckpointError(msg, hint="pass an existing UTF-8 vocab.txt") from e
        return cls(_split_lines(text), source=str(path))

    @classmethod
    def default(cls) -> Tokenizer:
        """The packaged bert-base-uncased vocabulary (30522 tokens), read without network access."""
        resource = importlib.resources.files("xvlm_edge").joinpath(DEFAULT_VOCAB)
        try:
            text = resource.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            msg = f"cannot read packaged vocabulary {resource}: {e}"
            raise CheckpointError(msg, hint="reinstall xvlm_edge") from e
        return cls(_split_lines(text), source=str(resource))

    def __len__(self) -> int:
        return len(self._tokens)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary back as vocab.txt, one token a line."""
        Path(path).write_text("".join(token + "\n" for token in self._tokens), encoding="utf-8")

    @property
    def pad_id(self) -> int:
        return self._ids["[PAD]"]

    @property
    def unk_id(self) -> int:
        return self._ids["[UNK]"]

    @property
    def cls_id(self) -> int:
        return self._ids["[CLS]"]

    @property
    def sep_id(self) -> int:
        return self._ids["[SEP]"]

    @property
    def mask_id(self) -> int:
        return self._ids["[MASK]"]

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without `[CLS]` / `[SEP]`."""
        return self._rust.encode(text, add_special_tokens=False).tokens

    def encode(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        padding: Literal["longest", "max_length"] = "longest",
        add_sep: bool = False,
    ) -> Encoding:
        """Tokenise a batch as `[CLS] X` (fine-tuning) or `[CLS] X [SEP]` (`add_sep`, captioning).

        With `max_length`, the pieces are cut so that the specials still fit (transformers' `truncation=True`).
        `padding="max_length"` pads every row to exactly `max_length`; "longest" pads to the longest row.
        Texts are not cleaned here: call `pre_caption` / `pre_question` first, as the official datasets do.
        """
        if isinstance(texts, str):
            msg = "encode takes a list of texts, got one str"
            raise InputError(msg, hint="wrap it: encode([text])")
        if padding not in ("longest", "max_length"):
            msg = f"padding must be 'longest' or 'max_length', got {padding!r}"
            raise InputError(msg)
        if padding == "max_length" and max_length is None:
            msg = "padding='max_length' needs max_length"
            raise InputError(msg)
        n_special = 2 if add_sep else 1
        if max_length is not None and max_length <= n_special:
            msg = f"max_length={max_length} leaves no room for text after {n_special} special tokens"
            raise InputError(msg)
        if not texts:
            msg = "encode got an empty batch"
            raise InputError(msg)

        rows = []
        for piece_ids in self._piece_ids(texts):
            if max_length is not None:
                piece_ids = piece_ids[: max_length - n_special]
            rows.append([self.cls_id, *piece_ids, *([self.sep_id] if add_sep else [])])

        width = max_length if padding == "max_length" else max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)  # (B, L)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.int64)  # (B, L)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
            attention_mask[i, : len(row)] = 1
        return Encoding(input_ids=input_ids, attention_mask=attention_mask)

    def encode_answers(self, answers: Sequence[str]) -> Encoding:
        """VQA answer candidates as the official `VQA.py`: `answer + "[SEP]"` -> `[CLS] pieces [SEP] [PAD]...`."""
        return self.encode([answer + "[SEP]" for answer in answers])

    def caption_prompt_ids(self, prompt: str = "a picture of ") -> torch.Tensor:
        """Generation prompt ids (int64, (P,)): `[CLS] prompt-pieces`, i.e. `tokenizer(prompt).input_ids[:-1]`."""
        return self.encode([prompt]).input_ids[0]

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Ids to text as transformers 4.12 `BertTokenizer.decode` (clean_up_tokenization_spaces=True)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                msg = f"decode takes one sequence (1-D ids), got shape {tuple(ids.shape)}"
                raise InputError(msg)
            ids = ids.tolist()
        tokens = []
        for i in ids:
            if not 0 <= i < len(self._tokens):
                msg = f"token id {i} is outside the vocabulary of {len(self._tokens)} tokens"
                raise TextError(msg)
            if not (skip_special_tokens and i in self._special_ids):
                tokens.append(self._tokens[i])
        text = " ".join(tokens).replace(" ##", "").strip()
        for old, new in _CLEANUPS:
            text = text.replace(old, new)
        return text

    def _piece_ids(self, texts: Sequence[str]) -> list[list[int]]:
        # One text at a time: encode_batch starts the Rust thread pool, which then warns in forked DataLoaders.
        pieces = []
        for text in texts:
            if not isinstance(text, str):
                msg = f"texts must be str, got {type(text).__name__}"
                raise TextError(msg)
            try:
                text.encode("utf-8")  # a lone surrogate (an undecodable byte escaped by Python) is no text
            except UnicodeEncodeError as exc:
                msg = f"text {text[:40]!r} is not valid Unicode ({exc.reason} at character {exc.start})"
                raise TextError(msg, hint="decode the text as UTF-8 first") from None
            piece_ids = self._rust.encode(text, add_special_tokens=False).ids
            if not piece_ids:
                msg = f"text {text!r} is empty or has no tokens after normalisation"
                raise TextError(msg, hint="pass some words")
            pieces.append(piece_ids)
        return pieces


def _split_lines(text: str) -> list[str]:
    """One token per line; only the newline is stripped (a final newline ends the last line, adds no token)."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines
