"""What the kit writes into a folder, and how, so that no command loses a user's files or lies about its state.

- **State files** (summary.json, mpi_run.json, results.json, ...) are written atomically (a temporary file, fsync,
  rename): a kill leaves the old file or the new one, never half of one. `read_json` turns a damaged one into a
  message naming the file and the way out.
- **Manifests**: a build (data, a recorded run) lists what it writes in `.mpi_manifest.json`; rebuilding removes
  only what that list names, and a folder holding files no such build wrote is refused, never emptied.
- **Locks**: one process writes a run folder at a time (`.mpi.lock`); a lock left by a dead process is taken over.
- **Scratch folders**: a tool's throwaway work goes into a folder made for it (`scratch_folder`), the only thing
  such a tool removes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

MANIFEST = ".mpi_manifest.json"
LOCK = ".mpi.lock"
OURS = (MANIFEST, LOCK)  # the kit's own bookkeeping: never a user's file


class StateError(ValueError):
    """A folder's state cannot be used as it is (a damaged state file, another build's files, a busy folder); the
    message names the file or folder and the way out."""


# ---------------------------------------------------------------------------------------------- state files

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> Path:
    """Write `text` to `path` atomically: readers see the old content or the new, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # a plain file's mode (mkstemp makes it private to its owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def write_json(path, obj, indent: int = 1) -> Path:
    """`obj` as JSON, atomically (`write_text`). NaN and infinities (a diverged loss) become null: they are not
    JSON, and a file holding them is unreadable to other tools."""
    return write_text(path, json.dumps(_finite(obj), indent=indent, allow_nan=False) + "\n")


def _finite(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def read_json(path, fix: str = "", kind: type = dict):
    """The JSON in `path`, or a StateError saying the file is damaged and `fix` (the way out)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise StateError(f"{path} is damaged and cannot be read ({type(e).__name__}: {str(e)[:80]}); it was probably "
                         f"cut short by a kill or a full disk. {fix}".rstrip()) from None
    if kind is not None and not isinstance(value, kind):
        raise StateError(f"{path} holds a JSON {type(value).__name__}, not the {kind.__name__} the kit wrote. {fix}"
                         .rstrip())
    return value


# ------------------------------------------------------------------------------------------------ manifests

def _entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name not in OURS and not p.name.startswith(".write-test-"))


def _manifest(out: Path) -> dict | None:
    f = out / MANIFEST
    if not f.exists():
        return None
    return read_json(f, f"Move your own files out of {out} and delete {f} to start over there, or use a new --out.")


def claim(out, kind: str, legacy=None, remove: bool = True) -> None:
    """Make `out` ready for a fresh build of `kind`: remove what an earlier build of that kind wrote (only what its
    manifest lists) and refuse a folder that holds anything else. `legacy(out)` may name the entries an older kit's
    build wrote there before manifests existed (None: not such a build). `remove=False` only checks, before work."""
    out = Path(out)
    if not out.is_dir():
        return
    found = _entries(out)
    if not found:
        return
    m = _manifest(out)
    if m is not None and m.get("kind") != kind:
        raise StateError(f"{out} holds a {m.get('kind')!r} build, not a {kind!r} one; use another folder")
    if m is None:
        names = legacy(out) if legacy else None
        if not names:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise StateError(f"{out} is not empty ({shown}) and no {kind} build wrote it, so nothing there may be "
                             f"replaced; use a new or empty folder")
        m = {"kind": kind, "entries": [n for n in names if n in found]}
    if remove:
        remove_listed(out, m)


def remove_listed(out: Path, m: dict) -> None:
    """Delete what manifest `m` lists in `out`: its files, then the folders they leave empty; a finished build lists
    every file it wrote ("files"), one cut short the top-level entries it started ("entries")."""
    out = Path(out)
    if "summary.json" in m.get("entries", []):  # first: a half-removed build is never taken for a finished one
        (out / "summary.json").unlink(missing_ok=True)
    if "files" in m:
        for rel in m["files"]:
            (out / rel).unlink(missing_ok=True)
        for d in sorted({(out / rel).parent for rel in m["files"]}, key=lambda p: -len(p.parts)):
            while d != out and d.is_dir() and not any(d.iterdir()):
                d.rmdir()
                d = d.parent
    else:
        for name in m.get("entries", []):
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)


def start_manifest(out, kind: str, entries) -> None:
    """Before a build writes anything: the top-level entries it is about to write (so a build cut short can still be
    cleaned up exactly)."""
    write_json(Path(out) / MANIFEST, {"kind": kind, "entries": sorted(entries)})


def finish_manifest(out, kind: str, entries) -> None:
    """After a build: every file it wrote under `entries`, which is what a rebuild removes."""
    out = Path(out)
    files = []
    for name in entries:
        p = out / name
        if p.is_dir():
            files += [f.relative_to(out).as_posix() for f in sorted(p.rglob("*")) if f.is_file()]
        elif p.exists():
            files.append(name)
    write_json(out / MANIFEST, {"kind": kind, "entries": sorted(entries), "files": files})


# ---------------------------------------------------------------------------------------------------- locks

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def lock(out, what: str = "a run"):
    """Hold `out`'s lock while writing it: a second process gets a StateError naming the holder. The OS drops the
    lock when its process dies, so a stale lock file is simply taken over. Ranks other than 0 of a distributed run
    share rank 0's lock."""
    out = Path(out)
    if int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) != 0:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd, path):
            os.close(fd)
            try:
                holder = json.loads(path.read_text() or "{}").get("pid")
            except (OSError, ValueError):
                holder = None
            who = f"process {holder}" if holder else "another process"
            raise StateError(f"{out} is in use: {who} is writing {what} there. Wait for it to finish (or stop it), "
                             f"or use another folder")
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder we waited on removed the file as it let go: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid()}).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # a finished run leaves no lock file behind
        _unlock(fd)
        os.close(fd)


@contextmanager
def scratch_folder(prefix: str, keep: bool = False):
    """A new, empty temporary folder for one run's work (a tool's copy of a checkout, a throwaway environment),
    removed when the run ends, an error or an interruption included. The folder is made here, with a fresh name, so
    everything in it is the run's own; nothing outside it is read or removed. keep: leave it for a look."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


try:
    import fcntl

    def _try_lock(fd: int, path: Path) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:  # no flock (Windows): the pid in the file decides, a dead holder's lock is taken over
    def _try_lock(fd: int, path: Path) -> bool:
        try:
            pid = json.loads(path.read_text() or "{}").get("pid")
        except (OSError, ValueError):
            pid = None
        return not pid or pid == os.getpid() or not _alive(int(pid))

    def _unlock(fd: int) -> None:
        os.ftruncate(fd, 0)


__all__ = ["StateError", "write_text", "write_json", "read_json", "claim", "start_manifest", "finish_manifest",
           "remove_listed", "lock", "scratch_folder", "MANIFEST", "LOCK"]
