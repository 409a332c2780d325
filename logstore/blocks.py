"""The block of evaluation rows being filled: the per-fact arrays and exposures, in memory.

The per-fact arrays are chunked S steps at a time (logstore.schema). Rather than let zarr read,
merge and re-encode a chunk for every new row, the writer keeps the current block of S rows
in memory and overwrites its chunks whole: no reads, and each chunk file is replaced
atomically, so a chunk on disk always holds complete committed rows (and maybe complete
uncommitted ones, which readers never show). Only chunks that a new row touches are
rewritten, so individuals not evaluated at a step cost nothing.
"""

from __future__ import annotations

import numpy as np
import zarr

from logstore.schema import DATA_VARIABLES, FACT_VARIABLES

BLOCK_VARIABLES = (*FACT_VARIABLES, "exposures")


class StepBlock:
    """Rows ``block * S .. block * S + S - 1`` of the per-fact arrays and exposures."""

    def __init__(self, arrays: dict[str, zarr.Array], n_individuals: int) -> None:
        self.arrays = {name: arrays[name] for name in BLOCK_VARIABLES}
        self.steps_per_chunk, self.individuals_per_chunk = arrays["loss"].chunks[:2]
        self.n = n_individuals
        # first individual of each chunk, for per-chunk reductions with reduceat
        self.chunk_starts = np.arange(0, self.n, self.individuals_per_chunk)
        self.rows = {
            name: np.empty((self.steps_per_chunk, *arrays[name].shape[1:]), dtype=DATA_VARIABLES[name].dtype) for name in BLOCK_VARIABLES
        }
        self.dirty = {name: np.zeros(len(self.chunk_starts), bool) for name in BLOCK_VARIABLES}
        self.block = -1
        self._finished: list = []  # writes of blocks completed since the last take_writes

    def _reset(self, block: int) -> None:
        for name, buf in self.rows.items():
            buf[...] = DATA_VARIABLES[name].fill
        self.block = block

    def load(self, n_rows: int) -> None:
        """Start after ``n_rows`` committed rows: read the block's committed rows back.

        Every chunk of that block is then rewritten by the next writes, which also erases
        rows beyond ``n_rows`` left by a killed writer or dropped by a resume.
        """
        s = self.steps_per_chunk
        self._reset(n_rows // s)
        first = self.block * s
        if n_rows > first:
            for name, buf in self.rows.items():
                buf[: n_rows - first] = self.arrays[name][first:n_rows]
        for flags in self.dirty.values():
            flags[:] = True

    def add(self, row: int, facts: dict[str, np.ndarray]) -> None:
        """Put evaluation row ``row`` in the block (a full previous block is set aside to write).

        ``facts`` holds loss, correct, top_prob, entropy (individual x attribute) and
        exposures (individual). Where loss is NaN the fact was not evaluated: correct is
        stored False and top_prob, entropy NaN, so unevaluated chunks stay empty.
        """
        block, k = divmod(row, self.steps_per_chunk)
        if block != self.block:
            self._finished.extend((array, selection, data.copy()) for array, selection, data in self._writes())
            self._reset(block)
        evaluated = ~np.isnan(facts["loss"])
        self.rows["loss"][k] = facts["loss"]
        self.rows["correct"][k] = facts["correct"] & evaluated
        for name in ("top_prob", "entropy"):
            self.rows[name][k] = np.where(evaluated, facts[name], np.float32(np.nan))
        self.rows["exposures"][k] = facts["exposures"]
        if self.n:
            touched = np.logical_or.reduceat(evaluated.any(axis=1), self.chunk_starts)
            for name in FACT_VARIABLES:
                self.dirty[name] |= touched
            self.dirty["exposures"] |= np.logical_or.reduceat(facts["exposures"] != 0, self.chunk_starts)

    def take_writes(self) -> list[tuple[zarr.Array, tuple, np.ndarray]]:
        """(array, selection, values) of every changed chunk range, whole chunks, to write now."""
        writes, self._finished = self._finished + self._writes(), []
        return writes

    def _writes(self) -> list[tuple[zarr.Array, tuple, np.ndarray]]:
        if self.block < 0:
            return []
        s, i = self.steps_per_chunk, self.individuals_per_chunk
        steps = slice(self.block * s, self.block * s + s)
        writes = []
        for name, flags in self.dirty.items():
            for j0, j1 in _runs(flags):
                individuals = slice(j0 * i, min(j1 * i, self.n))
                writes.append((self.arrays[name], (steps, individuals), self.rows[name][:, individuals]))
            flags[:] = False
        return writes


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index ranges of consecutive True values: [T, T, F, T] -> [(0, 2), (3, 4)]."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))
