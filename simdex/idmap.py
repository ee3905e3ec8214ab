"""Mapping between user ids (non-negative int64) and internal slots (row numbers in an index's arrays)."""

from __future__ import annotations

import numpy as np

from ._validate import check_filter
from .errors import DuplicateIdError, UnknownIdError


class IdMap:
    """Slot -> id array plus a sorted id -> slot index, both plain numpy arrays.

    Removed slots hold id -1 until the owning index compacts them away. Lookups are vectorised binary searches;
    updates merge sorted arrays (linear memory moves, no per-id Python work).
    """

    def __init__(self, slot_ids: np.ndarray | None = None) -> None:
        self.slot_ids = np.empty(0, np.int64) if slot_ids is None else np.asarray(slot_ids, np.int64)
        self._reindex()

    def copy(self) -> IdMap:
        """An independent copy, cheap: ``slot_ids`` is copied (:meth:`release` changes it in place); the sorted
        index is shared, as every change replaces those arrays instead of writing into them."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.slot_ids = np.array(self.slot_ids)
        return clone

    def _reindex(self) -> None:
        live = np.flatnonzero(self.slot_ids >= 0)
        order = np.argsort(self.slot_ids[live], kind="stable")
        self._sorted_ids = self.slot_ids[live][order]
        self._sorted_slots = live[order].astype(np.int64)

    def __len__(self) -> int:
        return int(self._sorted_ids.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.slot_ids.shape[0])

    def live_ids(self) -> np.ndarray:
        """Live ids in slot order."""
        return self.slot_ids[self.slot_ids >= 0]

    def next_id(self) -> int:
        return int(self._sorted_ids[-1]) + 1 if len(self) else 0

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids``; -1 where an id is not present."""
        ids = np.asarray(ids, np.int64)
        if len(self) == 0:
            return np.full(ids.shape, -1, np.int64)
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
        first_slot = self.num_slots
        self.slot_ids = np.concatenate([self.slot_ids, ids])
        slots = np.arange(first_slot, first_slot + ids.shape[0], dtype=np.int64)
        if ids.size == 0 or ((len(self) == 0 or ids.min() > self._sorted_ids[-1]) and np.all(ids[1:] > ids[:-1])):
            self._sorted_ids = np.concatenate([self._sorted_ids, ids])
            self._sorted_slots = np.concatenate([self._sorted_slots, slots])
            return
        order = np.argsort(ids, kind="stable")
        pos = np.searchsorted(self._sorted_ids, ids[order])
        self._sorted_ids = np.insert(self._sorted_ids, pos, ids[order])
        self._sorted_slots = np.insert(self._sorted_slots, pos, slots[order])

    def release(self, slots: np.ndarray) -> None:
        """Mark ``slots`` as removed (their ids become unknown)."""
        ids = self.slot_ids[slots]
        self.slot_ids[slots] = -1
        keep = np.ones(len(self), bool)
        keep[np.searchsorted(self._sorted_ids, ids)] = False
        self._sorted_ids = self._sorted_ids[keep]
        self._sorted_slots = self._sorted_slots[keep]

    def compact(self) -> np.ndarray:
        """Drop removed slots and renumber; returns old slot -> new slot (-1 for dropped)."""
        live = self.slot_ids >= 0
        remap = np.full(self.num_slots, -1, np.int64)
        remap[live] = np.arange(int(live.sum()))
        self.slot_ids = self.slot_ids[live]
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
