"""Mapping between user ids (non-negative int64) and internal slots (row numbers in an index's arrays)."""

from __future__ import annotations

import numpy as np

from ._numba import kernel
from ._validate import check_filter
from .errors import DuplicateIdError, UnknownIdError


class IdMap:
    """Slot -> id array (``slot_ids``) and the id -> slot lookup, plain numpy arrays.

    Removed slots hold id -1 until the owning index compacts them away. Lookups are vectorised binary searches.

    While ids arrive in increasing order (a collection's row ids, ids the index assigns itself), ``slot_ids`` is
    sorted apart from its removed slots, so the lookup searches it directly and the map costs 8 bytes a row; a
    removed slot is searched as the id it held, kept in two small arrays until compaction. Ids that arrive out
    of order switch the map to a sorted id -> slot index beside ``slot_ids`` (24 bytes a row), kept up to date by
    merging sorted arrays (linear memory moves, no per-id Python work).
    """

    #: subclasses that write ids into free slots in any order keep the sorted index from the start
    keeps_sorted_index = False

    def __init__(self, slot_ids: np.ndarray | None = None) -> None:
        self.slot_ids = np.empty(0, np.int64) if slot_ids is None else np.asarray(slot_ids, np.int64)
        self._shares_slot_ids = False
        self._reindex()

    def copy(self) -> IdMap:
        """An independent copy that shares every array until one of the two changes: :meth:`release`, which
        writes into ``slot_ids``, copies it first; every other change replaces arrays instead of writing into
        them. (A merge copies its index and then appends to it: one copy of the ids fewer at its peak.)"""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        self._shares_slot_ids = clone._shares_slot_ids = True
        return clone

    def _reindex(self) -> None:
        live = np.flatnonzero(self.slot_ids >= 0)
        ids = self.slot_ids[live]
        self._n_live = int(live.size)
        self._sorted_ids = self._sorted_slots = self._hole_slots = self._hole_ids = None
        if not self.keeps_sorted_index and (ids.size < 2 or bool(np.all(ids[1:] > ids[:-1]))):
            # a hole whose id is gone is searched as the live id before it: order is all a binary search needs
            self._hole_slots = np.flatnonzero(self.slot_ids < 0)
            before = np.searchsorted(live, self._hole_slots) - 1
            self._hole_ids = np.where(before >= 0, ids[np.maximum(before, 0)] if ids.size else -1, -1)
            self._last_id = int(ids[-1]) if ids.size else -1
            return
        order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[order]
        self._sorted_slots = live[order].astype(np.int64)

    @property
    def increasing(self) -> bool:
        """True while ids have arrived in increasing order and no sorted index is kept."""
        return self._sorted_ids is None

    def _keep_sorted_index(self) -> None:
        if self.increasing:
            live = np.flatnonzero(self.slot_ids >= 0)
            self._sorted_ids, self._sorted_slots = self.slot_ids[live], live.astype(np.int64)
            self._hole_slots = self._hole_ids = None

    def _index_sorted(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Merge ``ids`` (at ``slots``) into the sorted index."""
        self._n_live += int(ids.size)
        if ids.size == 0:
            return
        if (self._sorted_ids.size == 0 or ids.min() > self._sorted_ids[-1]) and np.all(ids[1:] > ids[:-1]):
            self._sorted_ids = np.concatenate([self._sorted_ids, ids])
            self._sorted_slots = np.concatenate([self._sorted_slots, slots])
            return
        order = np.argsort(ids, kind="stable")
        pos = np.searchsorted(self._sorted_ids, ids[order])
        self._sorted_ids = np.insert(self._sorted_ids, pos, ids[order])
        self._sorted_slots = np.insert(self._sorted_slots, pos, slots[order].astype(np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes held by the map's arrays."""
        arrays = (self.slot_ids, self._sorted_ids, self._sorted_slots, self._hole_slots, self._hole_ids)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def __len__(self) -> int:
        return self._n_live

    @property
    def num_slots(self) -> int:
        return int(self.slot_ids.shape[0])

    def live_ids(self) -> np.ndarray:
        """Live ids in slot order."""
        return self.slot_ids[self.slot_ids >= 0]

    def next_id(self) -> int:
        """One more than the largest live id (0 when there is none)."""
        if not self.increasing:
            return int(self._sorted_ids[-1]) + 1 if len(self) else 0
        return _last_live(self.slot_ids) + 1

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids``; -1 where an id is not present."""
        ids = np.asarray(ids, np.int64)
        if len(self) == 0:
            return np.full(ids.shape, -1, np.int64)
        if self.increasing:
            slots = np.empty(ids.size, np.int64)
            _find_increasing(self.slot_ids, self._hole_slots, self._hole_ids, ids.reshape(-1), slots)
            return slots.reshape(ids.shape)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos_c = np.minimum(pos, len(self) - 1)
        found = self._sorted_ids[pos_c] == ids
        return np.where(found, self._sorted_slots[pos_c], -1)

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids``; raises :class:`UnknownIdError` naming the first missing id."""
        slots = self.lookup(ids)
        missing = slots < 0
        if missing.any():
            raise UnknownIdError(f"id {int(np.asarray(ids)[missing][0])} is not in the index "
                                 f"({int(missing.sum())} unknown id(s) in total)")
        return slots

    def check_absent(self, ids: np.ndarray) -> None:
        present = self.lookup(ids) >= 0
        if present.any():
            raise DuplicateIdError(f"id {int(ids[present][0])} is already in the index "
                                   f"({int(present.sum())} duplicate(s)); remove it first to replace it")

    def new_ids(self, n: int) -> np.ndarray:
        start = self.next_id()
        return np.arange(start, start + n, dtype=np.int64)

    def append(self, ids: np.ndarray) -> None:
        """Give ``ids`` the next slots. The caller has checked that they are new and unique."""
        ids = np.asarray(ids, np.int64)
        first_slot = self.num_slots
        if self.increasing and ids.size and (ids[0] <= self._last_id or np.any(ids[1:] <= ids[:-1])):
            self._keep_sorted_index()
        self.slot_ids, self._shares_slot_ids = np.concatenate([self.slot_ids, ids]), False
        if self.increasing:
            self._n_live += int(ids.size)
            self._last_id = int(ids[-1]) if ids.size else self._last_id
            return
        self._index_sorted(ids, np.arange(first_slot, first_slot + ids.shape[0], dtype=np.int64))

    def release(self, slots: np.ndarray) -> None:
        """Mark ``slots`` (live, distinct) as removed: their ids become unknown."""
        slots = np.asarray(slots, np.int64)
        ids = self.slot_ids[slots]
        if self._shares_slot_ids:
            self.slot_ids, self._shares_slot_ids = np.array(self.slot_ids), False
        self.slot_ids[slots] = -1
        self._n_live -= int(slots.size)
        if self.increasing:
            order = np.argsort(slots, kind="stable")
            pos = np.searchsorted(self._hole_slots, slots[order])
            self._hole_slots = np.insert(self._hole_slots, pos, slots[order])
            self._hole_ids = np.insert(self._hole_ids, pos, ids[order])
            return
        keep = np.ones(self._sorted_ids.shape[0], bool)
        keep[np.searchsorted(self._sorted_ids, ids)] = False
        self._sorted_ids = self._sorted_ids[keep]
        self._sorted_slots = self._sorted_slots[keep]

    def compact(self) -> np.ndarray:
        """Drop removed slots and renumber; returns old slot -> new slot (-1 for dropped)."""
        live = self.slot_ids >= 0
        remap = np.full(self.num_slots, -1, np.int64)
        remap[live] = np.arange(int(live.sum()))
        self.slot_ids, self._shares_slot_ids = self.slot_ids[live], False
        self._reindex()
        return remap

    def allowed_mask(self, allow) -> np.ndarray:
        """Turn a user filter into a uint8 mask over slots (1 = may be returned).

        ``allow`` is a boolean mask indexed by id (ids beyond its length are not allowed) or an array of ids
        (ids not in the index are ignored, as in any set intersection).
        """
        arr = check_filter(allow)
        mask = np.zeros(self.num_slots, np.uint8)
        if arr.dtype == np.bool_:
            live = self.slot_ids >= 0
            inside = live & (self.slot_ids < arr.shape[0])
            mask[inside] = arr[self.slot_ids[inside]]
            return mask
        slots = self.lookup(arr)
        mask[slots[slots >= 0]] = 1
        return mask


@kernel
def _find_increasing(slot_ids, hole_slots, hole_ids, ids, out):
    """``out[j]``: the slot holding ``ids[j]``, or -1. ``slot_ids`` is increasing where it is not -1; a -1 slot is
    searched as the id in ``hole_ids`` beside it in ``hole_slots`` (sorted), which keeps the order."""
    n = slot_ids.shape[0]
    for j in range(ids.shape[0]):
        target = ids[j]
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) >> 1
            key = slot_ids[mid]
            if key < 0:
                key = hole_ids[np.searchsorted(hole_slots, mid)]
            if key < target:
                lo = mid + 1
            else:
                hi = mid
        out[j] = lo if target >= 0 and lo < n and slot_ids[lo] == target else -1


@kernel
def _last_live(slot_ids):
    for s in range(slot_ids.shape[0] - 1, -1, -1):
        if slot_ids[s] >= 0:
            return slot_ids[s]
    return -1
