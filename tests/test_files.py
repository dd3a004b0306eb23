"""`xvlm_edge.files`: atomic directory replacement survives a SIGKILL at every step; sha256_file."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xvlm_edge import files
from xvlm_edge.files import STEPS, atomic_directory, recover, sha256_file

ROOT = Path(__file__).resolve().parents[1]

OLD = {"a.txt": b"old a\n", "sub/b.bin": bytes(range(256)) * 64, "only_old.txt": b"gone after the swap"}
NEW = {"a.txt": b"new a\n", "sub/b.bin": bytes(reversed(range(256))) * 64, "sub/deep/c.txt": b"only new"}

# In a subprocess: replace `final` with NEW, SIGKILLed right after `step` (the fallback path when asked).
WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from xvlm_edge import files

    final, step, path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    new = {k: bytes.fromhex(v) for k, v in (arg.split("=") for arg in sys.argv[4:])}
    if path == "fallback":
        files._exchange = lambda a, b: False

    def _after_step(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    files._after_step = _after_step
    with files.atomic_directory(final) as tmp:
        for rel, data in new.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
    """
)


def _write(root: Path, content: dict[str, bytes]) -> None:
    for rel, data in content.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _snapshot(root: Path) -> dict[str, bytes] | None:
    if not root.is_dir():
        return None
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _siblings(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name != final.name)


def _kill_writer_at(final: Path, step: str, path: str) -> int:
    """Run WRITER (replace `final` with NEW) and check it was SIGKILLed; returns its pid."""
    args = [f"{rel}={data.hex()}" for rel, data in NEW.items()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final), step, path, *args], env=env, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    return proc.pid


def _exchange_works(where: Path) -> bool:
    (where / "x").mkdir()
    (where / "y").mkdir()
    try:
        return files._exchange(where / "x", where / "y")
    finally:
        for name in "xy":
            (where / name).rmdir()


CASES = [("renameat2", step) for step in STEPS if step != "aside"] + [("fallback", step) for step in STEPS]


@pytest.mark.parametrize(("path", "step"), CASES)
def test_killed_writer_leaves_old_or_new(tmp_path, path, step):
    if path == "renameat2" and not _exchange_works(tmp_path):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here (OS, libc or filesystem)")
    final = tmp_path / "models" / "export"
    _write(final, OLD)
    pid = _kill_writer_at(final, step, path)

    # The dead writer's leftovers, named after its pid: its temporary directory (after an exchange it holds
    # the old files), and on the fallback path the old directory renamed aside.
    leftovers = [name.replace(f".{final.name}.{pid}.", "", 1)[:4] for name in _siblings(final)]
    expected_leftovers = {
        "filled": ["tmp-"],
        "synced": ["tmp-"],
        "aside": ["old-", "tmp-"],
        "swapped": ["old-"] if path == "fallback" else ["tmp-"],
        "old deleted": [],
    }[step]
    assert leftovers == expected_leftovers, _siblings(final)

    if path == "fallback":
        assert recover(final) == (step == "aside")  # only a kill between the two renames needs a restore
    expected = OLD if STEPS.index(step) < STEPS.index("swapped") else NEW
    assert _snapshot(final) == expected  # byte for byte: never a mixture, never nothing

    # The next writer removes them (their pid is dead) and replaces `final` as usual.
    with atomic_directory(final) as tmp:
        (tmp / "third.txt").write_bytes(b"3")
    assert _snapshot(final) == {"third.txt": b"3"}
    assert _siblings(final) == []


def test_fallback_kill_between_renames_is_repaired_by_next_writer(tmp_path):
    """Without `recover`, the next `atomic_directory` call restores the aside old directory first."""
    final = tmp_path / "d"
    _write(final, OLD)
    _kill_writer_at(final, "aside", "fallback")
    assert not final.exists()
    with pytest.raises(RuntimeError), atomic_directory(final):
        raise RuntimeError("this writer fails too")
    assert _snapshot(final) == OLD
    assert _siblings(final) == []


def test_live_writers_siblings_are_never_removed(tmp_path):
    final = tmp_path / "d"
    _write(final, OLD)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = [tmp_path / f".d.{sleeper.pid}.tmp-abc123", tmp_path / f".d.{os.getpid()}.old-xyz_9"]
        for path in live:
            path.mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
        stale = tmp_path / f".d.{dead}.tmp-zzz"
        stale.mkdir()
        unrelated = [tmp_path / f".other.{dead}.tmp-zzz", tmp_path / f".d.{dead}.backup"]
        for path in unrelated:
            path.mkdir()
        with atomic_directory(final) as tmp:
            _write(tmp, NEW)
        assert _snapshot(final) == NEW
        assert not stale.exists()
        assert all(path.is_dir() for path in live + unrelated)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_in_process_fallback_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    final = tmp_path / "d"
    _write(final, OLD)
    with atomic_directory(final) as tmp:
        _write(tmp, NEW)
    assert _snapshot(final) == NEW
    assert _siblings(final) == []


def test_exception_leaves_old_and_no_temporary(tmp_path):
    final = tmp_path / "d"
    _write(final, OLD)
    def fill_then_fail() -> None:
        with atomic_directory(final) as tmp:
            _write(tmp, NEW)
            raise ValueError("half-way")

    with pytest.raises(ValueError, match="half-way"):
        fill_then_fail()
    assert _snapshot(final) == OLD
    assert _siblings(final) == []


def test_missing_final_and_parent_are_created(tmp_path):
    final = tmp_path / "a" / "b" / "engine"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(f".engine.{os.getpid()}.tmp-")
        _write(tmp, NEW)
    assert _snapshot(final) == NEW
    assert _siblings(final) == []


def test_recover_is_a_no_op_on_a_tidy_directory(tmp_path):
    final = tmp_path / "d"
    assert recover(final) is False and not final.exists()
    _write(final, OLD)
    assert recover(final) is False and _snapshot(final) == OLD


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * (1 << 20) + 12345)  # several 1 MiB chunks and a partial one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
