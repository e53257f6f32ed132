"""Atomic, code-free persistence: JSON for records, safetensors for tensors.

Every write goes to a temporary file in the same folder and is moved into place with
``os.replace``, so a crash or Ctrl-C leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from primitives.errors import GpProxyError

__all__ = [
    "RunLockedError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_tensors",
    "read_json",
    "read_text",
    "run_lock",
    "save_tensors",
]


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, _file_mode())  # mkstemp creates 0600; keep the usual permissions
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """A matplotlib figure written atomically (rendered in memory, then moved into place), so
    an interrupted plot never leaves half a picture."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_text(path: str | os.PathLike[str]) -> str:
    """A text file the user hands us, as UTF-8 (a leading byte-order mark, as spreadsheet
    programs write it, is dropped); a folder, a binary file or an unreadable one is one line
    naming it."""
    p = Path(path)
    try:
        return p.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise GpProxyError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise GpProxyError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise GpProxyError(f"{path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise GpProxyError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None


def read_json(path: str | os.PathLike[str]) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GpProxyError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _file_mode())
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a safetensors file (a plain tensor format: nothing is unpickled)."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise GpProxyError(f"{path}: file not found") from None
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise GpProxyError(f"{path}: not a valid safetensors file ({exc})") from None


class RunLockedError(GpProxyError):
    """A folder another live process is writing."""


@contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``folder/.lock`` while writing the folder: a second writer (two campaigns given
    the same ``--out``) fails at once naming the holder, instead of interleaving files. The
    kernel drops an flock when its process dies, so a killed run leaves no stale lock."""
    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            raise RunLockedError(f"{folder}: in use by {holder}; wait for it to finish or use "
                                 "another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {os.uname().nodename}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
