"""IdMap against a plain dict under random appends, removals, copies and compactions, in both of its forms."""

import numpy as np
import pytest

from simdex.dense.vamana import _SlotMap
from simdex.errors import UnknownIdError
from simdex.idmap import IdMap


def check_against(model: dict[int, int], idmap: IdMap, probe: np.ndarray) -> None:
    assert len(idmap) == len(model)
    expected = np.array([model.get(int(i), -1) for i in probe], np.int64)
    np.testing.assert_array_equal(idmap.lookup(probe), expected)
    live = [(s, i) for i, s in model.items()]
    np.testing.assert_array_equal(idmap.live_ids(), np.array([i for _, i in sorted(live)], np.int64))
    assert idmap.next_id() == (max(model) + 1 if model else 0)
    for i, s in model.items():
        assert idmap.slot_ids[s] == i


@pytest.mark.parametrize("increasing", [True, False])
def test_random_operations_match_a_dict(increasing):
    rng = np.random.default_rng(7)
    idmap, model, next_id = IdMap(), {}, 0
    for step in range(300):
        op = rng.integers(4)
        if op <= 1 or not model:
            n = int(rng.integers(0, 20))
            if increasing:
                ids = next_id + np.cumsum(rng.integers(1, 4, n))
            else:
                pool = np.setdiff1d(np.arange(400), np.array(list(model), np.int64))
                ids = rng.choice(pool, size=min(n, pool.size), replace=False)
            first = idmap.num_slots
            idmap.append(ids.astype(np.int64))
            model.update({int(i): first + k for k, i in enumerate(ids)})
            next_id = int(ids.max()) + 1 if ids.size else next_id
        elif op == 2:
            gone = rng.choice(np.array(list(model)), size=int(rng.integers(1, len(model) + 1)), replace=False)
            idmap.release(idmap.slots_of(gone))
            for i in gone:
                del model[int(i)]
        elif step % 3 == 0:
            remap = idmap.compact()
            model = {i: int(remap[s]) for i, s in model.items()}
        else:
            clone = idmap.copy()
            if model:
                clone.release(clone.slots_of(np.array([next(iter(model))], np.int64)))
            assert len(clone) == len(model) - 1
        probe = np.arange(-2, next_id + 3, dtype=np.int64)
        check_against(model, idmap, probe)
        if increasing:
            assert idmap.increasing  # no sorted index while ids only grow
    if not increasing:
        assert not idmap.increasing
    assert IdMap(idmap.slot_ids).nbytes <= idmap.nbytes


def test_an_increasing_map_keeps_one_array_and_switches_when_order_breaks():
    idmap = IdMap()
    idmap.append(np.arange(0, 1000, 2, dtype=np.int64))
    assert idmap.increasing and idmap.nbytes == idmap.slot_ids.nbytes
    clone = idmap.copy()  # shares the arrays until one of the two changes
    idmap.release(idmap.slots_of(np.arange(100, 600, 2, dtype=np.int64)))  # a long run of holes
    assert clone.lookup(np.array([100, 598], np.int64)).tolist() == [50, 299] and len(clone) == 500
    assert idmap.lookup(np.array([98, 100, 600, 601], np.int64)).tolist() == [49, -1, 300, -1]
    idmap.append(np.array([5, 3], np.int64))  # out of order: the sorted index takes over
    assert not idmap.increasing
    assert idmap.lookup(np.array([3, 5, 98, 600], np.int64)).tolist() == [501, 500, 49, 300]
    with pytest.raises(UnknownIdError, match="id 100 is not in the index"):
        idmap.slots_of(np.array([2, 100], np.int64))


def test_a_loaded_map_with_holes_and_a_slot_map():
    slot_ids = np.array([-1, -1, 4, -1, 9, 12, -1], np.int64)  # as saved: removed slots are -1
    idmap = IdMap(slot_ids)
    assert idmap.increasing and len(idmap) == 3
    assert idmap.lookup(np.array([-1, 0, 4, 5, 9, 12, 13], np.int64)).tolist() == [-1, -1, 2, -1, 4, 5, -1]
    idmap.append(np.array([13], np.int64))
    assert idmap.increasing and idmap.lookup(np.array([13], np.int64)).tolist() == [7]
    slot_map = _SlotMap(slot_ids)  # gives free slots to new ids in any order: keeps the sorted index
    slot_map.assign(np.array([3, 0], np.int64), np.array([1, 20], np.int64))
    assert not slot_map.increasing and len(slot_map) == 5
    assert slot_map.lookup(np.array([20, 1, 4, 9], np.int64)).tolist() == [0, 3, 2, 4]
