"""The `xvlm-edge` command: wires the command groups, and `main()` is the one place that catches.

Groups: `tasks.py` (caption, ground, match, check, retrieve, answer, nlvr), `checkpoints.py` (convert, smoke),
`export.py` (export, engines), `bench.py` (bench). The output contract is `_output.py`; exception types map
to exit codes and one-line messages in `_errors.py`.

Exit codes:
    0    success
    1    some inputs of a run failed (each is an error record; the others' results are all there), an
         XVLMEdgeError that is not the user's to fix (EngineError, AccuracyGateError, a backend this
         machine lacks), or an internal error (one line; --debug or XVLM_EDGE_DEBUG=1 for the traceback)
    2    a user mistake: usage, a missing or unreadable file, bad input, a wrong or stale checkpoint, a
         backend/device/precision named on the command line that is not available here; also a run in
         which every input failed on bad input
    130  interrupted (SIGINT); 143 terminated (SIGTERM); 141 stdout closed by its reader (quiet)
Every error is one line on stderr; data goes to stdout only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence

from xvlm_edge.cli import _errors
from xvlm_edge.cli._common import Parser, common_options

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from xvlm_edge.cli import bench, checkpoints, export, tasks

    parser = Parser(
        prog="xvlm-edge", description="X-VLM vision-language models on edge devices.", epilog=_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options()
    commands = [*tasks.add_commands(sub, common), *checkpoints.add_commands(sub, common), *export.add_commands(sub, common), *bench.add_commands(sub, common)]
    for command in commands:
        command.set_defaults(command_parser=command)
    return parser


_EXIT_CODES = """exit codes:
  0    success
  1    some inputs failed (each is an error record; every other result is there), or a failure that is
       not a usage mistake (one line; --debug or XVLM_EDGE_DEBUG=1 shows the traceback)
  2    a usage or input mistake (a bad flag, file, image, text or checkpoint; a backend, device or
       precision you named that is not available here), or every input of the run failed on one
  130  interrupted (Ctrl-C); 143 terminated; 141 stdout was closed by its reader"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xvlm-edge")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run `xvlm-edge` with `argv` (default: the process's arguments) and return its exit code.

    Run as the program (`argv` None: the console script, `python -m xvlm_edge.cli`), it also owns the
    process: warnings print as one `xvlm-edge: warning:` line and SIGTERM cleans up like Ctrl-C. Called from
    Python with a list, it leaves warnings and signal handlers to the caller.
    """
    debug = os.environ.get("XVLM_EDGE_DEBUG", "") not in ("", "0")
    command = None
    with _program() if argv is None else contextlib.nullcontext(), _logging() as set_level:
        try:
            args, extra = build_parser().parse_known_args(argv)
            command = args.command_parser
            if extra:  # argparse's own message would point at the top-level help, not this command's
                raise _errors.UsageError(f"unrecognized arguments: {' '.join(extra)}", hint=f"see {command.prog} --help")
            debug = debug or args.debug
            set_level(args.log_level)
            return args.run(args)
        except _errors.StdoutClosed:
            _silence_stdout()
            return _errors.EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            _errors.error_line("interrupted")
            return _errors.EXIT_INTERRUPTED
        except _errors.Terminated:
            _errors.error_line("terminated")
            return _errors.EXIT_TERMINATED
        except Exception as exc:
            return _errors.report(exc, debug=debug, command=command)


@contextlib.contextmanager
def _program() -> Iterator[None]:
    """The process-wide settings of the `xvlm-edge` program, restored afterwards."""
    with warnings.catch_warnings():
        warnings.showwarning = _errors.warning_line
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            yield
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    raise _errors.Terminated


@contextlib.contextmanager
def _logging() -> Iterator:
    """Library log records (`xvlm_edge.*`) as `xvlm-edge: <level>: <message>` lines on stderr, at --log-level."""
    logger = logging.getLogger("xvlm_edge")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("xvlm-edge: %(levelname)s: %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # shown once, by our handler

    def set_level(name: str) -> None:  # one of _common.LOG_LEVELS (argparse choices)
        logger.setLevel(name.upper())

    try:
        yield set_level
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return _errors.one_line(super().format(record), 2000)


def _silence_stdout() -> None:
    """After EPIPE, point fd 1 at /dev/null so the interpreter's final flush cannot print a BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a captured stdout): nothing to silence
        pass
