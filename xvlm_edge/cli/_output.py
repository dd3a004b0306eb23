"""The output contract of `xvlm-edge`, in one place: what goes to stdout, in which format, and when.

Data goes to stdout and nothing else does: logs, warnings, progress and errors go to stderr, so stdout always
parses. Three formats:

- human (default): one line per result, written and flushed as each input finishes;
- `--jsonl`: one JSON object per input, flushed as it finishes; a failed input is an error record
  `{"index", "image", "error": {"type", "message", "hint", "exit_code"}}`;
- `--json`: exactly one JSON document, printed when the run ends (`{"backend", "inputs", "failed",
  "results": [...]}` for the task verbs): lists in input order, never dicts keyed by a text or a path.

`--output FILE` also writes the same text to FILE, atomically: into a temporary file beside it, fsynced and
renamed over FILE (`os.replace`) only when the run ends; a run that fails or is interrupted leaves FILE as it
was. A reader that closes stdout early (`| head`) stops the run quietly (`StdoutClosed`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from xvlm_edge.cli._errors import EXIT_FAILED, EXIT_OK, StdoutClosed, describe, error_line, one_line
from xvlm_edge.errors import InputError

MODES = ("human", "json", "jsonl")


def mode_of(args: Any) -> str:
    if getattr(args, "jsonl", False):
        return "jsonl"
    return "json" if getattr(args, "json", False) else "human"


class Output:
    """The one sink for a command's results; use as a context manager (commit on success, discard on error).

    Per-input runs call `result` / `failure` for each input as it finishes and `finish` once; commands with a
    single result call `document`. `exit_code()` is 0 when every input succeeded; otherwise 1, or the failures'
    own code (2 for bad input) when no input succeeded at all, since then the run produced nothing.
    """

    def __init__(self, mode: str = "human", path: Path | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown output mode {mode!r}")
        self.mode = mode
        self.path = path
        self.header: dict[str, Any] = {}
        self.records: list[dict] = []
        self.succeeded = 0
        self.failed = 0
        self._failure_code = EXIT_OK
        self._file = None
        self._tmp: Path | None = None

    @classmethod
    def from_args(cls, args: Any) -> Output:
        return cls(mode_of(args), getattr(args, "output", None))

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> Output:
        if self.path is not None:
            self._open_file(Path(self.path))
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self._commit()
        else:
            self._discard()

    def _open_file(self, path: Path) -> None:
        """Check --output before any work, and open its temporary file beside it (same filesystem)."""
        if path.is_dir():
            raise InputError(f"--output {path} is a folder", hint="give a file path, e.g. --output results.jsonl")
        folder = path.parent
        if not folder.is_dir():
            raise InputError(f"--output {path}: folder {folder} does not exist", hint="create the folder first, or give another path")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise InputError(f"cannot write --output {path}: {exc.strerror}", hint="give a path in a folder you can write") from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename: give FILE the usual permissions
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "w", encoding="utf-8")

    def _commit(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)
        try:  # the rename itself is durable once the folder is synced
            folder = os.open(Path(self.path).parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def _discard(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        self._tmp.unlink(missing_ok=True)

    # -- writing --------------------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        """Text to stdout, flushed now (a killed run keeps every finished line), and to --output's file."""
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise StdoutClosed from None
        if self._file is not None:
            self._file.write(text)

    def _json(self, value: Any, *, indent: int | None = None) -> str:
        return json.dumps(value, indent=indent, allow_nan=False, default=str)

    def human(self, text: str) -> None:
        """Lines for a person; printed only in human mode."""
        if self.mode == "human" and text:
            self._write(_printable(text) + "\n")

    def result(self, record: dict, human: str, *, counted: bool = True) -> None:
        """One input's result: a human line (or lines), a JSON line, or kept for the final document.
        `counted=False`: a result that is not an input's (retrieval's per-text rankings)."""
        self.succeeded += counted
        self._emit(record, human)

    def failure(self, record: dict, exc: BaseException) -> None:
        """One input failed: an error record in the data, and one line on stderr; the run goes on."""
        code, line = describe(exc)
        self.failed += 1
        if self._failure_code == EXIT_OK:
            self._failure_code = code
        hint = getattr(exc, "hint", "")
        message = one_line(str(exc))
        record = {**record, "error": {"type": type(exc).__name__, "message": message, "hint": hint, "exit_code": code}}
        self._emit(record, "")
        error_line(line if record.get("image") is None or str(record["image"]) in line else f"{record['image']}: {line}")

    def _emit(self, record: dict, human: str) -> None:
        if self.mode == "json":
            self.records.append(record)
        elif self.mode == "jsonl":
            self._write(self._json(record) + "\n")
        else:
            self.human(human)

    def finish(self) -> None:
        """The end of a per-input run: in json mode, the one document."""
        if self.mode == "json":
            document = {**self.header, "inputs": self.succeeded + self.failed, "failed": self.failed, "results": self.records}
            self._write(self._json(document, indent=2) + "\n")

    def document(self, document: dict, human: str) -> None:
        """A command's one result (convert, export, smoke, bench, retrieve...)."""
        if self.mode == "human":
            self.human(human)
        else:
            self._write(self._json(document, indent=2 if self.mode == "json" else None) + "\n")

    def exit_code(self) -> int:
        if not self.failed:
            return EXIT_OK
        return self._failure_code if not self.succeeded else EXIT_FAILED


def note(text: str) -> None:
    """`xvlm-edge: note: <text>` on stderr: something the user should know about results that succeeded."""
    sys.stderr.write(f"xvlm-edge: note: {one_line(text)}\n")
    sys.stderr.flush()


def _printable(text: str) -> str:
    """`text` as stdout can encode it: a file name with undecodable bytes (surrogate escapes) or a narrow
    console encoding would otherwise raise UnicodeEncodeError mid-run; such characters print as escapes."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding, "replace")


__all__ = ["MODES", "Output", "mode_of", "note"]
