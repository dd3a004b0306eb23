"""The one exception tree of xvlm_edge: every error a user can cause is an XVLMEdgeError."""

from __future__ import annotations


class XVLMEdgeError(Exception):
    """Base of every error xvlm_edge raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class InputError(XVLMEdgeError, ValueError):
    """A user input (image, text, box, array) is unusable; the message names what is wrong."""


class ImageError(InputError):
    """An image could not be decoded or has an unsupported layout."""


class TextError(InputError):
    """A text is empty or cannot be tokenised."""


class CheckpointError(XVLMEdgeError):
    """A checkpoint is missing, corrupt, unsafe or of an unknown or wrong layout."""


class BackendUnavailableError(XVLMEdgeError):
    """The backend or precision asked for is not installed or not supported on this machine."""


class EngineError(XVLMEdgeError):
    """An inference engine refused to build or run (version mismatch, shape outside profile, missing tensor)."""


class StaleExportError(CheckpointError):
    """An export was made from other weights than its checkpoint directory holds now; re-export it."""


class ForcedExportWarning(UserWarning):
    """An export that failed its accuracy gate was written with --force, and is being loaded."""
