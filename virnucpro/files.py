"""Files: reading input (plain or compressed), writing output atomically, hashing content."""
from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import tempfile
import zlib

import torch

from .errors import InputError

# Compressed input is recognised by its first bytes, not by the file name.
_COMPRESSIONS = ((b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw)), (b"BZh", bz2.BZ2File),
                 (b"\xfd7zXZ\x00", lzma.LZMAFile))
# What reading a damaged or unreadable file raises (gzip, bzip2 and xz errors included).
READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


def open_raw(path: str | os.PathLike):
    """Open a file for reading its bytes as they are; a user's mistake is one line."""
    path = os.fspath(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


@contextlib.contextmanager
def open_binary(path: str | os.PathLike):
    """Open a file for reading bytes, decompressing gzip, bzip2 or xz.

    The file is read once, from its start, so a pipe works too.
    """
    with open_raw(path) as handle:
        start = handle.peek(6)[:6]
        decompress = next((opener for magic, opener in _COMPRESSIONS if start.startswith(magic)), None)
        if decompress is None:
            yield handle
        else:
            with decompress(handle) as stream:
                yield stream


@contextlib.contextmanager
def open_text(path: str | os.PathLike):
    """Open a UTF-8 text file (a leading BOM is dropped) for reading,
    decompressing gzip, bzip2 or xz."""
    with open_binary(path) as stream:
        yield io.TextIOWrapper(stream, encoding="utf-8-sig", newline=None)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """Write ``path`` through a temporary file in the same folder, renamed
    into place only when the block finishes without error.

    A crash or an error never leaves a half-written ``path`` behind. The file
    gets the mode the user's umask gives a new file (mkstemp's is 0600).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_tensors(content, path) -> None:
    """``torch.save`` of tensors, lists and dicts, atomically; nothing when ``path`` is None."""
    if path is not None:
        with atomic_write(path, "wb") as handle:
            torch.save(content, handle)


def _hexdigest(path, digest) -> str:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path) -> str:
    return _hexdigest(path, hashlib.sha256())


def git_blob_sha1(path) -> str:
    """Git's id of a file's content: SHA-1 of ``blob <size>\\0`` and the bytes."""
    return _hexdigest(path, hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode()))
