"""How every failure of the `xvlm-edge` command reads: exception type -> exit code and one line, in one table.

`main()` is the one place that catches (see `xvlm_edge.cli.main`); it calls `report` here. Every message is
one line on stderr, `xvlm-edge: error: <problem> (hint: <next step>)`, so a script can log it and a person
can act on it. `--debug` (or `XVLM_EDGE_DEBUG=1`) prints the traceback above that line.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from xvlm_edge.errors import BackendUnavailableError, CheckpointError, InputError, XVLMEdgeError

#: Exit codes that are not in the table: a signal's is 128 + its number, as a shell reports it.
EXIT_OK = 0
EXIT_FAILED = 1  # an XVLMEdgeError that is not the user's to fix; an internal error; some inputs of a run failed
EXIT_USAGE = 2  # a user mistake: usage, a missing or unreadable file, bad input, a wrong checkpoint
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_BROKEN_PIPE = 141  # SIGPIPE: stdout was closed by its reader (`| head`); nothing is printed
EXIT_TERMINATED = 143  # SIGTERM


class UsageError(InputError):
    """argparse refused the command line (unknown flag, bad number, missing argument)."""


class ChosenBackendError(BackendUnavailableError):
    """A backend, device or precision the user named on the command line is not available here.

    The library raises `BackendUnavailableError` for what is missing; the CLI re-raises it as this type when
    the user asked for that backend, device or precision, which makes it theirs to change (exit 2).
    """


class StdoutClosed(Exception):
    """stdout's reader went away (EPIPE): the run stops quietly, as a SIGPIPE'd Unix tool does."""


class Terminated(BaseException):
    """SIGTERM arrived; raised from the signal handler so that `--output` is cleaned up like on Ctrl-C."""


@dataclass(frozen=True)
class Row:
    kind: type[BaseException]
    exit_code: int
    message: Callable[[BaseException], str]


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _type_and_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_text(exc)}"


#: Exception type -> exit code and message, SUBCLASS FIRST: the first row whose type matches wins, so a
#: subclass must come before its base (tests/test_cli_contract.py checks the order).
ERRORS: tuple[Row, ...] = (
    Row(UsageError, EXIT_USAGE, _text),  # argparse's refusals
    Row(ChosenBackendError, EXIT_USAGE, _text),  # --backend/--device/--precision the user named, not available
    Row(InputError, EXIT_USAGE, _text),  # ImageError, TextError, a bad option value or path
    Row(CheckpointError, EXIT_USAGE, _text),  # missing, corrupt or wrong-layout checkpoints; StaleExportError
    Row(XVLMEdgeError, EXIT_FAILED, _text),  # EngineError, AccuracyGateError, a backend this machine lacks
)

#: Flags a library hint may name that some commands lack, and what to say there instead.
HINT_FOR_MISSING_FLAG = {
    "--vocab": "convert it first with its vocabulary: xvlm-edge convert CHECKPOINT DIR --vocab VOCAB.txt, then pass --model DIR",
    "--config-root": "convert it first: xvlm-edge convert CHECKPOINT DIR --config-root DIR, then pass --model DIR",
}


def row_for(exc: BaseException) -> Row | None:
    return next((row for row in ERRORS if isinstance(exc, row.kind)), None)


def exit_code(exc: BaseException) -> int:
    """The exit code the table gives `exc`; EXIT_FAILED for anything not in it (an internal error)."""
    row = row_for(exc)
    return row.exit_code if row is not None else EXIT_FAILED


def one_line(text: str, limit: int = 600) -> str:
    """Newlines and runs of blanks folded into single spaces (a message must stay one line), cut at `limit`."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def fit_hint(hint: str, command: argparse.ArgumentParser | None) -> str:
    """A library hint phrased for this command: `name='value'` becomes `--name value` where the command has
    that flag, and a hint that names a flag the command lacks is replaced by one that works from here."""
    if not hint or command is None:
        return hint
    flags = {option for action in command._actions for option in action.option_strings}
    if "xvlm_edge." not in hint:  # Python-API advice (xvlm_edge.load(...)) keeps its Python spelling

        def as_flag(match: re.Match) -> str:
            flag = "--" + match.group(1).replace("_", "-")
            return f"{flag} {match.group(3)}" if flag in flags else match.group(0)

        hint = re.sub(r"\b([a-z_]+)=(['\"]?)([\w.:/-]+)\2", as_flag, hint)
    own = re.split(r"xvlm-edge [a-z]+", hint)[0]  # flags after `xvlm-edge <verb>` belong to that verb
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", own):
        if flag not in flags:
            return HINT_FOR_MISSING_FLAG.get(flag, "")
    return hint


def describe(exc: BaseException, command: argparse.ArgumentParser | None = None) -> tuple[int, str]:
    """(exit code, the one line without the `xvlm-edge: error: ` prefix) for any exception."""
    row = row_for(exc)
    if row is None:
        first = one_line(_type_and_text(exc), 300)
        return EXIT_FAILED, f"internal error: {first} (run with --debug for the traceback)"
    message = one_line(row.message(exc))
    hint = fit_hint(getattr(exc, "hint", ""), command)
    return row.exit_code, message + (f" (hint: {one_line(hint)})" if hint else "")


def error_line(text: str) -> None:
    """`xvlm-edge: error: <text>` on stderr (one line)."""
    _stderr(f"xvlm-edge: error: {text}")


def report(exc: BaseException, *, debug: bool, command: argparse.ArgumentParser | None = None) -> int:
    """Print `exc` as one line (and its traceback first when debugging); return the exit code."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    code, line = describe(exc, command)
    error_line(line)
    return code


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:  # warnings.showwarning's signature
    """`warnings.showwarning` for the CLI: `xvlm-edge: warning: <message>`, one line, never a traceback."""
    _stderr(f"xvlm-edge: warning: {one_line(str(message))}")


def _stderr(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed too: nothing left to tell
        pass
