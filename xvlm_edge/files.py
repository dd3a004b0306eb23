"""Files: owns how files reach the disk, namely atomic directory replacement and content hashes.

Checkpoints, exports and engines are directories. A reader may load one while a writer replaces it, and
the writer may be killed (Ctrl-C, the OOM killer, SIGKILL, power loss) at any point. `atomic_directory`
has the writer fill a temporary sibling, fsync it, and swap it in, so that `final` is always either the
complete old directory or the complete new one. It is never a mixture, never half-written and never
missing for good. Each step below has a comment saying what a crash right after it leaves behind.

The swap is `renameat2(RENAME_EXCHANGE)` on Linux: one atomic syscall. Elsewhere, or on a filesystem
that refuses it, the old directory is renamed aside under a hidden name, the new one renamed in, and the
old one deleted. A crash between those two renames leaves `final` missing, and `recover` (which every
`atomic_directory` call runs first) renames the aside directory back.

Temporary and aside names carry the writer's pid (`.{name}.{pid}.tmp-XXXX`, `.{name}.{pid}.old-XXXX`).
That is how a later call tells a dead writer's leftovers, which it removes, from a live writer's work,
which it never touches.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The named points of `atomic_directory`, in order; `_after_step(name)` runs after each one.
#: "aside" happens only on the fallback path (old renamed aside, new not renamed in yet).
STEPS = ("filled", "synced", "aside", "swapped", "old deleted")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (exports and engines are checked against their manifests)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _after_step(name: str) -> None:
    """Does nothing. The crash tests replace it in a subprocess, to SIGKILL the writer after step `name`."""


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically. Returns False, with nothing changed, where the OS or filesystem can't."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync(path: Path) -> None:
    if os.name == "nt" and path.is_dir():  # Windows cannot open a directory to fsync it
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (bottom-up), and `root` itself. Symlinks are skipped."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                _fsync(path)
    _fsync(root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _alive(pid: int) -> bool:
    """Whether process `pid` runs. When in doubt the answer is yes, so a live writer's work is never removed."""
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True


def _leftovers(final: Path, kind: str) -> list[Path]:
    """Siblings of `final` that a writer which has since died left behind: `kind` is "tmp" or "old"."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(\d+)\.{kind}-\w+")
    if not final.parent.is_dir():
        return []
    found = []
    for sibling in final.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and not _alive(int(match.group(1))):
            found.append(sibling)
    return found


def recover(final: str | Path) -> bool:
    """Tidy up after a writer of `final` that was killed. Returns True if an old directory was restored.

    If `final` is missing but a dead writer renamed the old directory aside (it was killed between the
    fallback's two renames), the old directory is renamed back. Then the dead writers' temporary and
    aside directories are removed. Directories that belong to live processes are never touched."""
    final = Path(final)
    restored = False
    if not os.path.lexists(final):
        aside = sorted(_leftovers(final, "old"), key=lambda p: p.lstat().st_ctime_ns)
        if aside:
            os.rename(aside[-1], final)  # the newest aside copy is what `final` held last
            restored = True
    for leftover in _leftovers(final, "tmp") + _leftovers(final, "old"):
        shutil.rmtree(leftover, ignore_errors=True)
    if restored:
        _fsync(final.parent)
    return restored


def _swap_in(tmp: Path, final: Path) -> Path | None:
    """Put `tmp` at `final`. Returns the path now holding the replaced old directory (None if there was none).
    Raises only with `final` unchanged."""
    if not os.path.lexists(final):
        os.rename(tmp, final)  # one atomic rename: `final` goes from absent to complete
        return None
    if _exchange(tmp, final):
        return tmp  # one atomic swap: `final` is the new directory, and the old one now sits at tmp's name
    stem, suffix = tmp.name.rsplit(".tmp-", 1)
    old = tmp.with_name(f"{stem}.old-{suffix}")
    os.rename(final, old)  # a crash from here to the next rename leaves `final` missing; `recover` renames `old` back
    _after_step("aside")
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    return old


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """A temporary directory beside `final` to fill. When the block ends it replaces `final` atomically;
    if the block raises, it is removed and `final` is left as it was.

    At every instant, even if the process is killed, `final` is the old complete directory or the new
    complete one (after `recover`, which this runs first, on systems without renameat2)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.tmp-", dir=final.parent))
    try:
        yield tmp
        _after_step("filled")  # a crash before the swap leaves `final` old and `tmp` to the next call's cleanup
        _sync_tree(tmp)
        _after_step("synced")  # the new bytes are on disk, so the swap cannot expose an empty file after a power cut
        old = _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _after_step("swapped")  # `final` is new; a crash leaves the old directory for the next call's cleanup
    if old is not None:
        _remove(old)
    _after_step("old deleted")
    _fsync(final.parent)  # makes the rename (and the deletion) durable


__all__ = ["STEPS", "atomic_directory", "recover", "sha256_file"]
