"""Files: reading input (plain or compressed), writing output atomically, hashing content."""
from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import io
import lzma
import os
import shutil
import sys
import tempfile
import zlib

import torch
import zstandard

from virnucpro.errors import InputError


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of zstd frames one after the other (zstd writes one, pzstd several). A stream
    that ends inside a frame is a truncated file, an ``EOFError``, never a shorter one."""

    def __init__(self, raw):
        super().__init__()
        self.raw, self.decompressor = raw, zstandard.ZstdDecompressor()
        self.frame = None                   # the frame being decompressed
        self.output, self.taken = b"", 0    # decompressed bytes not yet read, and how many of them are

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.taken == len(self.output):
            compressed = self.raw.read(1 << 20)
            if not compressed:
                if self.frame is not None and not self.frame.eof:
                    raise EOFError("the zstd stream ends inside a frame")
                return 0
            self.output, self.taken = b"".join(self._frames(compressed)), 0
        count = min(len(buffer), len(self.output) - self.taken)
        buffer[:count] = self.output[self.taken:self.taken + count]
        self.taken += count
        return count

    def _frames(self, compressed: bytes):
        while compressed:
            if self.frame is None or self.frame.eof:
                self.frame = self.decompressor.decompressobj()
            yield self.frame.decompress(compressed)
            compressed = self.frame.unused_data if self.frame.eof else b""


# Compressed input is recognised by its first bytes, not by the file name.
def _zstd(raw):
    return io.BufferedReader(ZstdFrames(raw), buffer_size=1 << 20)


#                 name, first bytes, reader, how to decompress it, file suffix
_COMPRESSIONS = (("gzip", b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw), "gzip -dc", ".gz"),
                 ("bzip2", b"BZh", bz2.BZ2File, "bzip2 -dc", ".bz2"),
                 ("xz", b"\xfd7zXZ\x00", lzma.LZMAFile, "xz -dc", ".xz"),
                 ("zstd", b"\x28\xb5\x2f\xfd", _zstd, "zstd -dc", ".zst"))
_ARCHIVES = ((b"PK\x03\x04", "a zip archive", "unzip it"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "7z x it"))
SNIFFED = 4096                      # bytes looked at before anything is decoded
# What reading a damaged or unreadable file raises (gzip, bzip2, xz and zstd errors included).
READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


def is_disk_full(error: BaseException) -> bool:
    """Whether an error is a full disk or an exhausted quota."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def open_raw(path: str | os.PathLike):
    """Open a file for reading its bytes as they are (``-``: standard input); a user's mistake is one line."""
    path = os.fspath(path)
    if path == "-":
        try:
            return os.fdopen(os.dup(sys.stdin.fileno()), "rb")     # closing it leaves sys.stdin open
        except (AttributeError, ValueError, OSError):              # no standard input at all (started with <&-)
            raise InputError("-: standard input is closed; pipe the reads in (zcat reads.fq.gz | ... - ...) or "
                             "give a file") from None
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as error:                                      # a symlink loop, a name too long, ...
        raise InputError(f"{path}: cannot be opened ({error.strerror or error})") from None


class Tap(io.RawIOBase):
    """Reads a raw stream through, adding every byte to ``digest`` and, when
    given, to ``copy`` (a pipe is spooled as it is read, never before)."""

    def __init__(self, raw, digest, copy=None):
        super().__init__()
        self.raw, self.digest, self.copy, self.size = raw, digest, copy, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.raw.readinto(buffer)
        if count:
            block = memoryview(buffer)[:count]
            self.digest.update(block)
            if self.copy is not None:
                self.copy.write(block)
            self.size += count
        return count


def _format_of(start: bytes):
    return next((entry for entry in _COMPRESSIONS if start.startswith(entry[1])), None)


def _refuse_unreadable(start: bytes, name: str, inside: str | None) -> None:
    """Archives, doubly compressed files and binary data, named with what to do instead."""
    for magic, what, fix in _ARCHIVES:
        if start.startswith(magic):
            raise InputError(f"{name}: {what}, not a FASTA or FASTQ file; {fix} and give the file inside")
    if start[257:262] == b"ustar":
        raise InputError(f"{name}: a tar archive{f' ({inside}-compressed)' if inside else ''}, not a FASTA or FASTQ "
                         f"file; extract it (tar -xf {name}) and give the file inside")
    nested = _format_of(start)
    if inside and nested:
        outer = next(entry for entry in _COMPRESSIONS if entry[0] == inside)
        raise InputError(f"{name}: compressed twice ({nested[0]} inside {inside}); decompress it once "
                         f"({outer[3]} {name} > decompressed_once{nested[4]}) and give that file")
    if b"\x00" in start:
        raise InputError(f"{name}: binary data (byte 0x00 at offset {start.index(0)}"
                         f"{f' once {inside}-decompressed' if inside else ''}), not a FASTA or FASTQ file")


@contextlib.contextmanager
def open_binary(path: str | os.PathLike, name: str | None = None, tap=None):
    """Open a file for reading bytes, decompressing gzip, bzip2, xz or zstd,
    told apart by their first bytes. ``name`` is what messages call the file
    (default: its path); ``tap(raw) -> raw`` reads the raw bytes through a
    ``Tap``. Archives, files compressed twice and binary data are refused
    before anything is decoded.

    The file is read once, from its start, so a pipe works too.
    """
    name = name or os.fspath(path)
    with open_raw(path) as raw:
        handle = raw if tap is None else io.BufferedReader(tap(raw), buffer_size=1 << 20)
        start = handle.peek(SNIFFED)[:SNIFFED]
        compression = _format_of(start)
        if compression is None:
            _refuse_unreadable(start, name, None)
            yield handle
            return
        with compression[2](handle) as stream:
            try:
                inner = stream.peek(SNIFFED)[:SNIFFED]
            except READ_ERRORS:
                inner = b""                                       # damaged: the reader says so, at its line
            _refuse_unreadable(inner, name, compression[0])
            yield stream


@contextlib.contextmanager
def open_text(path: str | os.PathLike, name: str | None = None):
    """Open a UTF-8 text file (a leading BOM is dropped) for reading,
    decompressing gzip, bzip2, xz or zstd."""
    with open_binary(path, name) as stream:
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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = path                       # a full disk names the file it was writing
        raise


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_tensors(content, path) -> None:
    """``torch.save`` of tensors, lists and dicts, atomically; nothing when ``path`` is None. A disk too
    full for them is an ``OSError`` (ENOSPC), not the RuntimeError torch makes of it."""
    if path is None:
        return
    try:
        with atomic_write(path, "wb") as handle:
            torch.save(content, handle)
    except RuntimeError as error:
        if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < _tensor_bytes(content):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path)) from error
        raise


def _tensor_bytes(content) -> int:
    """The bytes of the tensors in nested dicts and lists."""
    if isinstance(content, torch.Tensor):
        return content.nbytes
    if isinstance(content, dict):
        content = content.values()
    return sum(map(_tensor_bytes, content)) if isinstance(content, (list, tuple, type({}.values()))) else 0


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


def check_writable(folder: str, option: str, what: str = "the results") -> None:
    """Stop at once, before any work, when ``what`` could not be written into ``folder`` (given with
    ``option``): it is a file, or its first existing folder may not be written (created if need be)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"{option} {folder}: is a file, not a folder; give a folder for {what}")
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise InputError(f"{folder}: {what} cannot be written there ({existing}: {reason}); give {option} a "
                         "folder you can write to") from None


def check_writable_file(path: str, option: str, what: str) -> None:
    """The same for a file to be written: its folder."""
    if os.path.isdir(path):
        raise InputError(f"{option} {path}: is a folder; give the path of {what}")
    check_writable(os.path.dirname(os.path.abspath(path)), option, what)

