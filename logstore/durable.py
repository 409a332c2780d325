"""Durable local storage for the writer: atomic, fsynced files and a one-writer lock.

zarr's LocalStore already replaces every file atomically (write a temporary file, rename
it over the old one), so a killed process never leaves a torn chunk under a real key. This
store adds durability: the temporary file is fsynced before the rename, and the directories
the renames touched are fsynced (``sync``) before the writer records a commit, so a commit
never points at rows that a power cut could still take away.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from pathlib import Path

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from logstore.schema import StoreError, chunk_checksum

PARTIAL_SUFFIX = ".partial"  # temporary files (ours and zarr's) end with this
LOCK_SUFFIX = ".lock"  # metrics.zarr.lock, beside the store: zarr warns about strange files inside

try:  # POSIX advisory locks; released by the kernel when the holder dies, even by SIGKILL
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, one writer per run is on the user
    fcntl = None


def fsync_dir(path: Path) -> None:
    """Make renames and deletions inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableStore(LocalStore):
    """A LocalStore whose writes survive power loss once ``sync()`` has returned.

    ``fsync=False`` keeps the atomic renames (safe against a killed process) but leaves
    flushing to the operating system: faster, for tests and throwaway runs.
    """

    def __init__(self, root: Path | str, *, read_only: bool = False, fsync: bool = True,
                 checksums: dict[str, dict[str, int]] | None = None) -> None:
        super().__init__(root, read_only=read_only)
        self.fsync = fsync
        self._dirty_dirs: set[Path] = set()
        self._dirty_lock = threading.Lock()
        # array -> chunk key -> crc32c of every chunk file written (the last 4 bytes of a
        # chunk, which the Crc32cCodec appends): what the writer records with each commit,
        # so that a reader tells a lost or misplaced chunk from one never written.
        self._checksums = {name: dict(chunks) for name, chunks in (checksums or {}).items()}

    def with_read_only(self, read_only: bool = False) -> DurableStore:
        return type(self)(self.root, read_only=read_only, fsync=self.fsync, checksums=self._checksums)

    def checksums(self) -> dict[str, dict[str, int]]:
        """A copy of the chunk checksums (array -> chunk key -> crc32c) recorded so far."""
        with self._dirty_lock:
            return {name: dict(chunks) for name, chunks in self._checksums.items() if chunks}

    def _record(self, key: str, value: bytes | None) -> None:
        array, _, chunk = key.rpartition("/")
        if not chunk.startswith("c."):
            return
        with self._dirty_lock:
            if value is None:
                self._checksums.get(array, {}).pop(chunk, None)
            else:
                self._checksums.setdefault(array, {})[chunk] = chunk_checksum(value)

    def _touched(self, path: Path) -> None:
        with self._dirty_lock:
            self._dirty_dirs.add(path.parent)

    def _put(self, key: str, value: Buffer) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
        try:
            with tmp.open("wb") as f:
                f.write(value.as_buffer_like())
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._touched(path)
        self._record(key, value.as_buffer_like())

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if exclusive:  # only zarr's set_if_not_exists, which we never rely on
            return await super()._set(key, value, exclusive=True)
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(self._put, key, value)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._check_writable()
        self._put(key, value)

    async def delete(self, key: str) -> None:
        await super().delete(key)
        self._touched(self.root / key)
        self._record(key, None)

    def delete_sync(self, key: str) -> None:
        super().delete_sync(key)
        self._touched(self.root / key)
        self._record(key, None)

    def sync(self) -> None:
        """Make every rename and deletion so far durable (fsync their directories)."""
        with self._dirty_lock:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        if self.fsync:
            for d in dirs:
                if d.is_dir():
                    fsync_dir(d)


def scan_checksums(root: Path, arrays) -> dict[str, dict[str, int]]:
    """The checksums of every chunk file on disk (for a store written before they were recorded)."""
    out = {}
    for name in arrays:
        folder = root / name
        files = sorted(f for f in folder.iterdir() if f.name.startswith("c.") and not f.name.endswith(PARTIAL_SUFFIX)) \
            if folder.is_dir() else []
        chunks = {}
        for file in files:
            if file.stat().st_size < 4:  # not a chunk: its checksum codec would refuse it
                continue
            with file.open("rb") as f:
                f.seek(-4, os.SEEK_END)
                chunks[file.name] = chunk_checksum(f.read(4))
        if chunks:
            out[name] = chunks
    return out


def remove_partial_files(root: Path) -> int:
    """Delete temporary files a killed writer left behind; returns how many."""
    removed = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(PARTIAL_SUFFIX):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


class WriterLock:
    """An exclusive lock on a store for its one writer (a lock file beside the store)."""

    def __init__(self, root: Path) -> None:
        self.store = Path(root)
        self.path = self.store.with_name(self.store.name + LOCK_SUFFIX)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a read-only folder or file system
            raise StoreError(f"{self.store}: cannot be written ({err.strerror}: {self.path})") from None
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise StoreError(f"{self.store}: another process is writing this run (one writer per run)") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def writer_busy(store: str | os.PathLike) -> bool:
    """True when another process holds the writer lock of ``store`` (it is writing the run now).
    Asking needs no write access (flock takes a read-only descriptor): a read-only run can be asked."""
    try:
        fd = os.open(WriterLock(Path(store)).path, os.O_RDONLY)
    except OSError:  # no lock file (never written), or not readable: nobody we can see writes it
        return False
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
