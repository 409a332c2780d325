"""RunWriter: the one writer of a run's metrics.zarr, crash-safe and off the training thread.

The trainer appends evaluation rows and training-step blocks; a background thread writes
them, makes them durable, and only then advances the ``committed_steps`` and
``committed_train_steps`` attributes that readers trust. Rows beyond those counts may be
on disk (a writer was killed mid-write) but are invisible, and a resumed writer overwrites
them. See docs/logstore.md for the commit protocol.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import queue
import shutil
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from logstore.blocks import StepBlock
from logstore.checks import check_store, verify_store
from logstore.durable import DurableStore, WriterLock, fsync_dir, remove_partial_files, scan_checksums
from logstore.schema import (
    ADDED_LATER,
    ATTENTION_VARIABLES,
    ATTR_CHECKSUMS,
    ATTRIBUTES,
    CHUNK_INDIVIDUALS,
    CHUNK_STEPS,
    SCHEMA_VERSION,
    SPLITS,
    STATUSES,
    STEP_VARIABLES,
    TRAIN_VARIABLES,
    TRAIN_CHUNK,
    VARIABLES,
    StoreError,
    create_arrays,
)

_STOP = object()


@dataclass
class _Eval:
    row: int
    step: int
    facts: dict  # loss, correct, top_prob, entropy, exposures
    attention: dict  # attn_* (layer x head)


@dataclass
class _Train:
    train_step: np.ndarray
    values: dict  # train_loss, lr


@dataclass
class _Barrier:
    done: threading.Event = field(default_factory=threading.Event)


class RunWriter:
    """Writes one run's metrics.zarr. Make one with ``create`` or ``resume``; one per run.

    ``append_eval`` and ``append_train`` return at once (they copy their inputs); a
    background thread compresses and writes. If it falls ``queue_size`` rows behind, the
    next append waits. An error in that thread is raised, as a StoreError, by the next call.
    """

    def __init__(self, root: Path, store: DurableStore, lock: WriterLock, committed: int, committed_train: int, queue_size: int):
        self.path = root
        self._store = store
        self._lock = lock
        self._group = zarr.open_group(store, mode="r+", use_consolidated=False)
        self._arrays = {name: self._group[name] for name in VARIABLES if name not in ADDED_LATER}
        self._n = self._arrays["individual"].shape[0]
        self._attn_shape = self._arrays["attn_sharpness"].shape[1:]
        self._rows = self._committed = committed
        self._train_rows = self._committed_train = committed_train
        steps = self._arrays["step"][:committed]
        train_steps = self._arrays["train_step"][:committed_train]
        self._last_step = int(steps[-1]) if committed else None
        self._appended_step = self._last_step
        self._appended_train_step = int(train_steps[-1]) if committed_train else None
        self._block = StepBlock(self._arrays, self._n)
        self._block.load(committed)
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._work, name=f"logstore-writer:{root}", daemon=True)
        self._thread.start()
        # A trainer that exits without close() still gets its appended rows committed.
        self._at_exit = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    # ----------------------------------------------------------------- opening

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        individual: np.ndarray,
        split: np.ndarray,
        rank: np.ndarray,
        baseline: np.ndarray,
        chance_accuracy: np.ndarray | None = None,
        n_layers: int,
        n_heads: int,
        config: dict | str,
        package_version: str,
        chunk_steps: int = CHUNK_STEPS,
        chunk_individuals: int = CHUNK_INDIVIDUALS,
        attributes: dict | None = None,
        fsync: bool = True,
        queue_size: int = 16,
    ) -> RunWriter:
        """Create a new store at ``path`` (the metrics.zarr directory; an error if it exists).

        ``individual`` (ids), ``split`` (train | heldout | finetune) and ``rank`` (-1 outside
        train) fix the store's order of individuals: put the densely evaluated ones first,
        so chunks of individuals not evaluated at a step are not written. ``baseline`` is
        the no-knowledge loss per attribute, in nats, in ATTRIBUTES order, and
        ``chance_accuracy`` its accuracy (the chance level; None: unknown, stored NaN); ``config`` the
        resolved configuration (stored as JSON); ``attributes`` more group attributes (the
        trainer's stages, conditions and condition_label; values that are not strings are
        stored as JSON). ``fsync=False`` gives up durability
        against power loss (not against a killed process) for speed.
        """
        root = Path(path)
        if root.exists():
            raise StoreError(f"{root}: already exists: a run's store is created once (continue a stopped run with "
                             f"phasefit train {root.parent / 'config.toml'} --out {root.parent} --resume, or move the "
                             "store away to start it over)")
        individual = np.asarray(individual, dtype=np.int64)
        split = np.asarray(split).astype(str)
        rank = np.asarray(rank, dtype=np.int64)
        baseline = np.asarray(baseline, dtype=np.float64)
        chance = np.full(len(ATTRIBUTES), np.nan) if chance_accuracy is None else np.asarray(chance_accuracy, np.float64)
        n = len(individual)
        if individual.ndim != 1 or split.shape != (n,) or rank.shape != (n,):
            raise ValueError(f"individual, split and rank must all have shape ({n},)")
        if baseline.shape != (len(ATTRIBUTES),) or chance.shape != (len(ATTRIBUTES),):
            raise ValueError(f"baseline and chance_accuracy must have one value per attribute {ATTRIBUTES}")
        unknown = set(np.unique(split)) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; expected one of {SPLITS}")
        # Built under a temporary name and renamed at the end: the store exists complete or not at all.
        tmp = root.with_name(f"{root.name}.creating-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        store = DurableStore(tmp, fsync=fsync)
        group_attrs = {
            "schema_version": SCHEMA_VERSION,
            "config": config if isinstance(config, str) else json.dumps(config, sort_keys=True, default=str),
            "status": "running",
            "committed_steps": 0,
            "committed_train_steps": 0,
            "package_version": str(package_version),
            **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in (attributes or {}).items()},
        }
        group = zarr.open_group(store, mode="w-", zarr_format=3, attributes=group_attrs)
        arrays = create_arrays(group, n, int(n_layers), int(n_heads), chunk_steps, chunk_individuals)
        arrays["individual"][:] = individual
        arrays["split"][:] = split
        arrays["rank"][:] = rank
        arrays["attribute"][:] = np.array(ATTRIBUTES)
        arrays["baseline"][:] = baseline
        arrays["chance_accuracy"][:] = chance
        _update_attrs(group, {ATTR_CHECKSUMS: store.checksums()})
        store.sync()
        tmp.rename(root)
        if fsync:
            fsync_dir(root.parent)
        lock = WriterLock(root)
        lock.acquire()
        return cls._open(root, lock, 0, 0, store.checksums(), fsync, queue_size)

    @classmethod
    def resume(cls, path: str | os.PathLike, after_step: int | None = None, *, fsync: bool = True, queue_size: int = 16) -> RunWriter:
        """Reopen a run for writing, after its last committed row.

        With ``after_step`` (a training step, e.g. of the checkpoint resumed from),
        evaluation rows with step > after_step and training rows with train_step >
        after_step are dropped first. The status becomes running until ``close``.
        """
        root, attrs = check_store(path)
        lock = WriterLock(root)
        lock.acquire()
        try:
            verify_store(root)  # a damaged store is refused before anything in it changes
            committed, committed_train, checksums = reopen_store(root, attrs, after_step, fsync)
        except BaseException:
            lock.release()
            raise
        return cls._open(root, lock, committed, committed_train, checksums, fsync, queue_size)

    @classmethod
    def _open(cls, root: Path, lock: WriterLock, committed: int, committed_train: int, checksums: dict, fsync: bool,
              queue_size: int) -> RunWriter:
        try:
            store = DurableStore(root, fsync=fsync, checksums=checksums)
            return cls(root, store, lock, committed, committed_train, queue_size)
        except BaseException:
            lock.release()
            raise

    # ----------------------------------------------------------------- appending

    @property
    def last_step(self) -> int | None:
        """The last committed evaluation step (training steps), or None before the first."""
        return self._last_step

    def append_eval(
        self,
        step: int,
        *,
        loss: np.ndarray,
        correct: np.ndarray,
        top_prob: np.ndarray,
        entropy: np.ndarray,
        exposures: np.ndarray,
        attn_name_to_name: np.ndarray,
        attn_value_to_name: np.ndarray,
        attn_sharpness: np.ndarray,
    ) -> None:
        """Append the evaluation at training step ``step`` (greater than every earlier one).

        loss (nats), correct, top_prob, entropy (nats): individual x attribute, loss NaN
        where a fact was not evaluated; exposures: per individual; attn_*: layer x head.
        """
        self._check_open()
        step = int(step)
        if self._appended_step is not None and step <= self._appended_step:
            raise ValueError(f"{self.path}: evaluation step {step} is not after the last one ({self._appended_step})")
        fact_shape = (self._n, len(ATTRIBUTES))
        facts = {
            "loss": _copy(loss, np.float32, fact_shape, "loss"),
            "correct": _copy(correct, np.bool_, fact_shape, "correct"),
            "top_prob": _copy(top_prob, np.float32, fact_shape, "top_prob"),
            "entropy": _copy(entropy, np.float32, fact_shape, "entropy"),
            "exposures": _copy(exposures, np.int32, (self._n,), "exposures"),
        }
        attention = {
            "attn_name_to_name": _copy(attn_name_to_name, np.float32, self._attn_shape, "attn_name_to_name"),
            "attn_value_to_name": _copy(attn_value_to_name, np.float32, self._attn_shape, "attn_value_to_name"),
            "attn_sharpness": _copy(attn_sharpness, np.float32, self._attn_shape, "attn_sharpness"),
        }
        self._put(_Eval(self._rows, step, facts, attention))
        self._rows += 1
        self._appended_step = step

    def append_train(self, train_step: np.ndarray, train_loss: np.ndarray, lr: np.ndarray) -> None:
        """Append a block of training steps: their numbers, mean token losses (nats), rates."""
        self._check_open()
        train_step = np.array(train_step, dtype=np.int64, ndmin=1)
        k = len(train_step)
        values = {"train_loss": _copy(train_loss, np.float32, (k,), "train_loss"), "lr": _copy(lr, np.float32, (k,), "lr")}
        if k == 0:
            return
        first = self._appended_train_step
        if np.any(np.diff(train_step) <= 0) or (first is not None and train_step[0] <= first):
            raise ValueError(f"{self.path}: train steps must increase (last appended {first}, got {train_step[0]}..{train_step[-1]})")
        self._put(_Train(train_step, values))
        self._train_rows += k
        self._appended_train_step = int(train_step[-1])

    def flush(self) -> None:
        """Wait until everything appended is durable and committed."""
        self._check_open()
        barrier = _Barrier()
        self._queue.put(barrier)
        barrier.done.wait()
        self._raise_background_error()

    def close(self, status: str = "complete", reason: str = "") -> None:
        """Flush, record ``status`` (and ``reason`` when failed), consolidate metadata.

        If the background thread failed, the run is marked failed and that error raised.
        """
        if status not in STATUSES or status == "running":
            raise ValueError(f"close status must be 'complete' or 'failed', not {status!r}")
        if self._closed:
            return
        barrier = _Barrier()
        self._queue.put(barrier)
        barrier.done.wait()
        self._queue.put(_STOP)
        self._thread.join()
        self._closed = True
        atexit.unregister(self._at_exit)
        error = self._background_error()
        try:
            if error is None:
                self._finish(status, reason)
            else:  # the arrays may be damaged: only record why the run failed
                self._set_status("failed", _joined(reason, str(error)))
        except Exception as err:
            error = error or StoreError(f"{self.path}: closing the store failed: {type(err).__name__}: {err}")
            error.__cause__ = error.__cause__ or err
            try:
                self._set_status("failed", _joined(reason, str(error)))
            except Exception:
                pass  # the run stays 'running'; a resume finds its committed rows intact
        finally:
            self._lock.release()
        if error is not None:
            raise error

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close("complete")
            return
        try:
            self.close("failed", reason=f"{exc_type.__name__}: {exc}")
        except StoreError as err:  # keep the original exception the one that propagates
            exc.add_note(f"while closing the store: {err}")

    # ----------------------------------------------------------------- background thread

    def _put(self, item) -> None:
        self._queue.put(item)
        self._raise_background_error()

    def _work(self) -> None:
        while True:
            items = [self._queue.get()]
            while not isinstance(items[-1], _Barrier) and items[-1] is not _STOP:
                try:  # gather what is already queued into one write and one commit
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if self._error is None:
                try:
                    self._write(items)
                except BaseException as err:  # surfaced by the next call
                    self._error = err
            for item in items:
                if isinstance(item, _Barrier):
                    item.done.set()
            if items[-1] is _STOP:
                return

    def _write(self, items: list) -> None:
        evals = [it for it in items if isinstance(it, _Eval)]
        trains = [it for it in items if isinstance(it, _Train)]
        if not evals and not trains:
            return
        committed, committed_train = self._committed, self._committed_train
        writes = []  # (array, selection, values)
        if evals:
            first, committed = evals[0].row, evals[-1].row + 1
            self._grow(STEP_VARIABLES, committed, self._block.steps_per_chunk)
            for it in evals:
                self._block.add(it.row, it.facts)
            writes += self._block.take_writes()
            rows = slice(first, committed)
            writes.append((self._arrays["step"], rows, np.array([it.step for it in evals], dtype=np.int64)))
            writes += [(self._arrays[name], rows, np.stack([it.attention[name] for it in evals])) for name in ATTENTION_VARIABLES]
        if trains:
            first, committed_train = committed_train, committed_train + sum(len(it.train_step) for it in trains)
            self._grow(TRAIN_VARIABLES, committed_train, TRAIN_CHUNK)
            rows = slice(first, committed_train)
            writes.append((self._arrays["train_step"], rows, np.concatenate([it.train_step for it in trains])))
            writes += [(self._arrays[name], rows, np.concatenate([it.values[name] for it in trains])) for name in ("train_loss", "lr")]
        _gather([array.async_array.setitem(selection, values) for array, selection, values in writes])
        self._store.sync()  # the rows are durable: now (and only now) commit them
        _update_attrs(self._group, {"committed_steps": committed, "committed_train_steps": committed_train,
                                   ATTR_CHECKSUMS: self._store.checksums()})
        self._store.sync()
        self._committed, self._committed_train = committed, committed_train
        if evals:
            self._last_step = evals[-1].step

    def _grow(self, names: tuple[str, ...], rows: int, multiple: int) -> None:
        """Make room for ``rows`` rows, in whole chunks; readers ignore rows past the commit."""
        if self._arrays[names[0]].shape[0] >= rows:
            return
        capacity = -(-rows // multiple) * multiple
        arrays = [self._arrays[name] for name in names]
        _gather([a.async_array.resize((capacity, *a.shape[1:])) for a in arrays])  # updates them in place

    # ----------------------------------------------------------------- closing

    def _finish(self, status: str, reason: str) -> None:
        """Trim the arrays to the committed rows, record the status, consolidate metadata."""
        for name in STEP_VARIABLES:
            resize_rows(self._arrays[name], self._committed)
        for name in TRAIN_VARIABLES:
            resize_rows(self._arrays[name], self._committed_train)
        self._set_status(status, reason)
        with warnings.catch_warnings():
            # zarr warns that consolidated metadata is not yet in the v3 spec; xarray and
            # zarr-python read it, and our readers need only the arrays' own metadata.
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(self._store)
        self._store.sync()

    def _set_status(self, status: str, reason: str) -> None:
        attrs = {k: v for k, v in self._group.attrs.asdict().items() if k != "reason"}
        attrs["status"] = status
        attrs[ATTR_CHECKSUMS] = self._store.checksums()  # what is on disk now, trimmed or not
        if status == "failed":
            attrs["reason"] = reason or "unknown"
        self._group.attrs.put(attrs)
        self._store.sync()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: the writer is closed")
        self._raise_background_error()

    def _background_error(self) -> StoreError | None:
        if self._error is None:
            return None
        if isinstance(self._error, StoreError):
            return self._error
        err = StoreError(f"{self.path}: writing failed in the background: {type(self._error).__name__}: {self._error}")
        err.__cause__ = self._error
        return err

    def _raise_background_error(self) -> None:
        error = self._background_error()
        if error is not None:
            raise error


def _gather(coroutines: list) -> None:
    """Run zarr operations concurrently, in one round trip to zarr's event loop."""

    async def run() -> list:
        return await asyncio.gather(*coroutines, return_exceptions=True)

    for result in sync(run()):
        if isinstance(result, BaseException):
            raise result


def _update_attrs(group: zarr.Group, changes: dict) -> None:
    """Change some of a group's attributes in one write of its zarr.json. zarr's
    ``attrs.update`` writes the whole document once per key: a reader opening in between (or a
    writer killed there) saw a commit's row counts with the previous commit's checksums."""
    group.attrs.put({**group.attrs.asdict(), **changes})


def _joined(reason: str, error: str) -> str:
    """A failed run's reason and the store's own error, once: the reason often quotes the error
    (the trainer saw the store fail first)."""
    return reason if error in reason else "; ".join(filter(None, [reason, error]))


def _copy(value, dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A private copy (the caller may reuse its buffers) in the store's dtype and shape."""
    out = np.array(value, dtype=dtype, copy=True)
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, not {out.shape}")
    return out


def _flush_at_exit(ref: weakref.ref) -> None:
    writer = ref()
    if writer is not None and not writer._closed and writer._thread.is_alive():
        try:
            writer.flush()
        except Exception:
            pass  # the run stays 'running'; resume continues after what was committed


# ------------------------------------------------ reopening a store
# Reopening a store for writing after a crash or a checkpoint leaves it in a state every
# reader and a later writer can trust (as ``RunWriter.create`` does: a store exists complete
# or not at all): the commit is lowered first (readers stop showing dropped rows at once) and
# the arrays trimmed after (no stale chunk survives to be mistaken for a new row).


def reopen_store(root: Path, attrs: dict, after_step: int | None, fsync: bool) -> tuple[int, int, dict]:
    """Prepare a store for a resumed writer (see RunWriter.resume; hold its lock).

    Returns the committed (evaluation, training) rows the writer continues after, and the
    chunk checksums (read from the disk for a store written before they were recorded).
    """
    remove_partial_files(root)
    checksums = attrs.get(ATTR_CHECKSUMS)
    store = DurableStore(root, fsync=fsync, checksums=checksums if isinstance(checksums, dict) else scan_checksums(root, VARIABLES))
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    missing = [name for name in VARIABLES if name not in group and name not in ADDED_LATER]
    if missing:
        raise StoreError(f"{root}: array '{missing[0]}' is missing")
    committed = int(attrs["committed_steps"])
    committed_train = int(attrs.get("committed_train_steps", group["train_step"].shape[0]))
    if after_step is not None:
        committed = int(np.searchsorted(group["step"][:committed], after_step, side="right"))
        committed_train = int(np.searchsorted(group["train_step"][:committed_train], after_step, side="right"))
    new_attrs = {k: v for k, v in attrs.items() if k != "reason"}
    new_attrs.update(status="running", committed_steps=committed, committed_train_steps=committed_train)
    group.attrs.put(new_attrs)  # also drops the consolidated metadata, stale from now on
    store.sync()
    for name in STEP_VARIABLES:  # zarr deletes the chunks past the new end
        resize_rows(group[name], committed)
    for name in TRAIN_VARIABLES:
        resize_rows(group[name], committed_train)
    _update_attrs(group, {ATTR_CHECKSUMS: store.checksums()})  # without the chunks deleted
    store.sync()
    return committed, committed_train, store.checksums()


def resize_rows(array: zarr.Array, rows: int) -> None:
    """Make ``array`` ``rows`` long along its first dimension (deleting chunks past it)."""
    if array.shape[0] != rows:
        array.resize((rows, *array.shape[1:]))
