"""Atomic, code-free persistence: JSON for records, safetensors for tensors.

Every write goes to a temporary file in the same folder and is moved into place with
``os.replace``, so a crash or Ctrl-C leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from primitives.errors import GpProxyError

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "load_tensors",
           "read_json", "read_text", "save_tensors"]


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
