"""VamanaIndex (DiskANN graph, FreshDiskANN updates) and VamanaDiskIndex (codes in memory, vectors and adjacency
memory-mapped): recall against numpy brute force on real data, lazy deletes and consolidation, concurrent search
during inserts and deletes, slot recycling, persistence and bad input.

The conformance suite (tests/test_conformance.py) runs the shared add/search/remove/save/load/bad-input checks.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from simdex import (CorruptFileError, InvalidInputError, InvalidTypeError, UnknownIdError, VamanaIndex,
                    fileformat)
from simdex.dense.vamana import DELETED, FREE, LIVE
from simdex.quant import PQCodec, StreamingVamanaIndex, VamanaDiskIndex
from tests.conftest import numpy_knn


def recall(found, truth, k=10):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def live_recall(index, base, queries, live_ids, k=10, L=None):
    """recall@k of ``index`` against brute force over the rows ``live_ids`` of ``base`` (ids are row numbers)."""
    _, truth = numpy_knn(base[live_ids], queries, k, index.metric)
    _, found = index.search(queries, k, L=L)
    return recall(found, live_ids[truth], k)


def dead_links(index):
    """Out-links of live nodes that point at deleted or free slots (consolidation must leave none)."""
    g = index._g
    live = np.flatnonzero(g.state[:index._n] == LIVE)
    bad = 0
    for v in live:
        nbrs = g.adj[v, 1:1 + g.adj[v, 0]]
        bad += int(np.count_nonzero(g.state[nbrs] != LIVE))
    return bad


@pytest.fixture(scope="module")
def wordnet(wordnet_small):
    return wordnet_small.base[:4000].copy(), wordnet_small.queries[:100].copy()


@pytest.fixture(scope="module")
def built(wordnet):
    base, _ = wordnet
    index = VamanaIndex(base.shape[1], "cosine", R=32, L_build=64)
    index.add(base)
    return index


def test_recall_against_brute_force(built, wordnet, fashion_small):
    base, queries = wordnet
    r = live_recall(built, base, queries, np.arange(base.shape[0]), L=64)
    assert r >= 0.97, f"recall@10 {r:.3f}"
    # the beam size is the knob: a tiny beam is worse
    assert live_recall(built, base, queries, np.arange(base.shape[0]), L=10) < r
    stats = built.graph_stats()
    assert stats["min_degree"] >= 1 and stats["mean_degree"] <= built.room
    assert built._g.adj[:built._n, 0].max() <= built.room
    # l2 on Fashion-MNIST
    x = fashion_small.base[:3000] / 255.0
    q = fashion_small.queries[:100] / 255.0
    index = VamanaIndex(x.shape[1], "l2", R=32, L_build=64)
    index.add(x)
    assert live_recall(index, x, q, np.arange(3000), L=64) >= 0.95


def test_second_pass_with_alpha_helps_at_small_beam(wordnet):
    """alpha > 1 keeps long edges: at a small beam the two-pass graph beats the alpha = 1 graph."""
    base, queries = wordnet
    results = {}
    for alpha in (1.0, 1.2):
        index = VamanaIndex(base.shape[1], "cosine", R=16, L_build=48, alpha=alpha)
        index.add(base[:3000])
        results[alpha] = live_recall(index, base[:3000], queries, np.arange(3000), L=12)
    assert results[1.2] > results[1.0], results


def test_same_graph_whatever_the_thread_count(wordnet):
    base, _ = wordnet
    graphs = []
    for threads in (1, 2):
        index = VamanaIndex(base.shape[1], "cosine", R=16, L_build=32)
        index.add(base[:1500], threads=threads)
        index.add(base[1500:2000], threads=threads)
        graphs.append(np.array(index._g.adj[:index._n]))
    np.testing.assert_array_equal(graphs[0], graphs[1])


def test_deletes_never_returned_and_consolidation_repairs(wordnet):
    base, queries = wordnet
    n = 3000
    index = VamanaIndex(base.shape[1], "cosine", R=32, L_build=64, consolidate_threshold=0.5)
    index.add(base[:n])
    rng = np.random.default_rng(3)
    _, before = index.search(queries, 10)
    gone = np.union1d(np.unique(before[:, :2]), rng.choice(n, 300, replace=False))
    index.remove(gone)
    assert index.graph_stats()["deleted"] == gone.size  # below the threshold: tombstones only
    live = np.setdiff1d(np.arange(n), gone)
    _, found = index.search(queries, 10, L=64)
    assert not np.isin(found, gone).any()
    assert live_recall(index, base, queries, live, L=64) >= 0.95
    index.consolidate()
    stats = index.graph_stats()
    assert stats["deleted"] == 0 and stats["free"] == gone.size
    assert dead_links(index) == 0
    assert live_recall(index, base, queries, live, L=64) >= 0.95
    # re-inserting fills the freed slots instead of growing the arrays
    slots_before = index._n
    index.add(base[gone], gone)
    assert index._n == slots_before and index.graph_stats()["free"] == 0
    assert live_recall(index, base, queries, np.arange(n), L=64) >= 0.95


def test_ten_cycles_of_churn_keep_recall(wordnet):
    """Delete 10% and re-insert it, ten times: recall stays within 0.02 of the freshly built graph."""
    base, queries = wordnet
    n = 3000
    index = VamanaIndex(base.shape[1], "cosine", R=32, L_build=64)
    index.add(base[:n])
    fresh = live_recall(index, base, queries, np.arange(n), L=32)
    rng = np.random.default_rng(4)
    for _ in range(10):
        gone = rng.choice(n, n // 10, replace=False)
        index.remove(gone)
        index.add(base[gone], gone)
    assert index._n <= n + n // 10  # slots are recycled
    index.consolidate()  # what is left of the tombstones: afterwards no edge may point at a removed node
    assert index.graph_stats()["deleted"] == 0 and dead_links(index) == 0
    r = live_recall(index, base, queries, np.arange(n), L=32)
    assert r >= fresh - 0.02, (r, fresh)


def test_freed_slots_wait_for_searches_that_started_before(wordnet):
    """Epoch-based reclamation: a search in flight when slots are freed keeps them from being reused."""
    base, _ = wordnet
    index = VamanaIndex(base.shape[1], "cosine", R=16, L_build=32)
    index.add(base[:1000])
    epoch = index._enter()  # a search that is still running
    index.remove(np.arange(100))
    index.consolidate()
    n_slots = index._n
    index.add(base[1000:1050])
    assert index._n == n_slots + 50, "freed slots were reused while a search could still reach them"
    index._leave(epoch)
    index.add(base[1050:1100])
    assert index._n == n_slots + 50, "freed slots were not reused once the search ended"


def test_concurrent_search_during_inserts_and_deletes(wordnet):
    """Searches in other threads while the graph is changed (background consolidation included): no errors,
    no id that was removed before the search started, and recall holds afterwards."""
    base, queries = wordnet
    n0 = 2000
    index = VamanaIndex(base.shape[1], "cosine", R=24, L_build=48, background=True)
    index.add(base[:n0])
    removed = np.empty(0, np.int64)  # replaced (never mutated) after each remove returns
    errors: list[BaseException] = []
    checked = [0]
    stop = threading.Event()

    def searcher(seed):
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                dead = removed
                qs = queries[rng.choice(queries.shape[0], 8, replace=False)]
                d, ids = index.search(qs, 10, L=48, threads=1)
                assert not np.isin(ids, dead).any(), "a removed id was returned"
                assert (ids >= 0).all() and np.isfinite(d).all()
                checked[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(5)
    live = np.arange(n0)
    next_row = n0
    try:
        for _ in range(6):
            gone = rng.choice(live, 250, replace=False)
            index.remove(gone)
            removed = np.union1d(removed, gone)
            live = np.setdiff1d(live, gone)
            # new rows under new ids, so a removed id never comes back
            rows = np.arange(next_row, next_row + 250)
            index.add(base[rows], rows)
            live = np.union1d(live, rows)
            next_row += 250
    finally:
        stop.set()
        for t in threads:
            t.join()
        index.wait()
    assert not errors, errors[0]
    assert checked[0] > 0
    assert len(index) == live.size
    np.testing.assert_array_equal(np.sort(index.ids), live)
    assert live_recall(index, base, queries, live, L=48) >= 0.95


def test_save_load_keeps_tombstones_and_free_slots(wordnet, tmp_path):
    base, queries = wordnet
    index = VamanaIndex(base.shape[1], "cosine", R=16, L_build=32, consolidate_threshold=0.5)
    index.add(base[:1500])
    index.remove(np.arange(200))
    index.consolidate()  # 200 free slots
    index.remove(np.arange(200, 260))  # 60 tombstones
    path = tmp_path / "v.sdx"
    index.save(path)
    for mmap in (True, False):
        loaded = VamanaIndex.load(path, mmap=mmap)
        np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
        assert loaded.graph_stats() == index.graph_stats()
        loaded.add(base[:200], np.arange(200))  # fills the free slots
        assert loaded._n == index._n
        assert not np.isin(loaded.search(queries, 10)[1], np.arange(200, 260)).any()


def _rewrite(path, **changes):
    kind, meta, arrays = fileformat.load_arrays(path, mmap=False)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    for name, fn in changes.items():
        if name == "meta":
            fn(meta)
        else:
            fn(arrays[name])
    fileformat.save_arrays(path, kind, meta, arrays)


@pytest.mark.parametrize("damage", ["neighbour out of range", "degree too large", "bad state", "entry free",
                                    "ids disagree with states"])
def test_inconsistent_file_is_rejected(wordnet, tmp_path, damage):
    base, _ = wordnet
    index = VamanaIndex(base.shape[1], "cosine", R=16, L_build=32, consolidate_threshold=0.9)
    index.add(base[:300])
    index.remove([3])
    path = tmp_path / "v.sdx"
    index.save(path)

    def set_entry_free(arr):
        arr[index._g.entry] = FREE

    changes = {
        "neighbour out of range": {"adj": lambda a: a.__setitem__((5, 1), 10_000)},
        "degree too large": {"adj": lambda a: a.__setitem__((5, 0), index.room + 1)},
        "bad state": {"state": lambda a: a.__setitem__(7, 9)},
        "entry free": {"state": set_entry_free},
        "ids disagree with states": {"state": lambda a: a.__setitem__(3, LIVE)},
    }[damage]
    _rewrite(path, **changes)
    with pytest.raises(CorruptFileError):
        VamanaIndex.load(path)


def test_bad_parameters_and_input_leave_index_unchanged(wordnet):
    base, queries = wordnet
    for kwargs, error in (({"R": 1}, InvalidInputError), ({"alpha": 0.9}, InvalidInputError),
                          ({"alpha": "1.2"}, InvalidInputError), ({"L_build": 0}, InvalidInputError),
                          ({"L_search": 2.5}, InvalidTypeError), ({"consolidate_threshold": 0}, InvalidInputError)):
        with pytest.raises(error):
            VamanaIndex(base.shape[1], "cosine", **kwargs)
    index = VamanaIndex(base.shape[1], "cosine", R=16, L_build=32)
    index.add(base[:500])
    index.remove([1, 2])
    before = (np.array(index._g.adj[:index._n]), np.array(index._g.state[:index._n]), index.ids.copy())
    bad = base[500:503].copy()
    bad[1, 4] = np.nan
    for call in (lambda: index.add(bad), lambda: index.add(base[:3, :-1]), lambda: index.add(base[:2], [1, 1]),
                 lambda: index.add(base[:2], [7, 600]), lambda: index.remove([1]), lambda: index.remove([3, 10**9]),
                 lambda: index.search(queries, 5, L=0)):
        with pytest.raises((InvalidInputError, UnknownIdError)):
            call()
        np.testing.assert_array_equal(index._g.adj[:index._n], before[0])
        np.testing.assert_array_equal(index._g.state[:index._n], before[1])
        np.testing.assert_array_equal(index.ids, before[2])
    assert index._g.state[1] == DELETED


# ---- SSD-resident mode ---------------------------------------------------------------------------------------------
def _file_backed(arr) -> bool:
    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    return base is not None


def _pq(m):
    # few k-means iterations: the tests check the index, not the codec (tests/test_quant_codecs.py does that)
    return PQCodec(384, "cosine", m=m, iterations=4)


@pytest.mark.parametrize("codec", ["pq48", "lvq8"])
def test_disk_mode_recall_and_memory(wordnet, codec, tmp_path):
    base, queries = wordnet
    index = VamanaDiskIndex(base.shape[1], "cosine", R=32, L_build=64, codec=_pq(48) if codec == "pq48" else codec,
                            storage_dir=str(tmp_path))
    index.add(base)
    assert _file_backed(index._g.vectors) and _file_backed(index._g.adj)
    assert not _file_backed(index._g.codes)
    r = live_recall(index, base, queries, np.arange(base.shape[0]), L=64)
    assert r >= 0.97, f"{codec}: recall@10 {r:.3f}"
    # what stays in RAM is a fraction of the float32 vectors (PQ: 48 bytes per 1,536-byte vector)
    assert index.nbytes < (0.1 if codec == "pq48" else 0.3) * base.nbytes
    assert index.disk_nbytes >= base.nbytes
    # distances are exact (the expanded nodes are re-ranked by their full vectors)
    d, i = index.search(queries[:20], 5)
    x = base / np.linalg.norm(base, axis=1, keepdims=True)
    qn = queries[:20] / np.linalg.norm(queries[:20], axis=1, keepdims=True)
    np.testing.assert_allclose(d, 1 - np.einsum("qd,qkd->qk", qn, x[i]), atol=1e-4)


def test_disk_mode_updates_save_load(wordnet, tmp_path):
    base, queries = wordnet
    index = VamanaDiskIndex(base.shape[1], "cosine", R=24, L_build=48, codec=_pq(32), storage_dir=str(tmp_path))
    with pytest.raises(InvalidInputError, match="256"):
        index.add(base[:100])  # PQ training needs 256 vectors
    assert len(index) == 0
    index.add(base[:3000])
    gone = np.arange(0, 3000, 7)
    index.remove(gone)
    index.consolidate()
    index.add(base[3000:3500], np.arange(3000, 3500))  # recycles the freed slots
    live = np.setdiff1d(np.arange(3500), gone)
    assert not np.isin(index.search(queries, 10)[1], gone).any()
    assert live_recall(index, base, queries, live, L=64) >= 0.95
    path = tmp_path / "d.sdx"
    index.save(path)
    loaded = VamanaDiskIndex.load(path, mmap=True)
    assert _file_backed(loaded._g.vectors) and not _file_backed(loaded._g.codes)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    loaded.release_pages()
    loaded.add(base[gone[:50]], gone[:50])  # the first change moves the arrays off the read-only file
    assert len(loaded) == live.size + 50
    np.testing.assert_array_equal(VamanaDiskIndex.load(path).search(queries, 10)[1], index.search(queries, 10)[1])


def test_disk_mode_concurrent_search_during_updates(wordnet, tmp_path):
    base, queries = wordnet
    index = VamanaDiskIndex(base.shape[1], "cosine", R=24, L_build=48, codec=_pq(32), storage_dir=str(tmp_path),
                            background=True)
    index.add(base[:2000])
    # the deletes below may make exact search over the live nodes the cheaper path: compile it now, so that the
    # first search during the updates does not outlast them
    index.search(queries[:1], 10, filter=np.arange(100))
    removed = np.empty(0, np.int64)
    errors: list[BaseException] = []
    stop, started, updating = threading.Event(), threading.Event(), threading.Event()
    during = [0]  # searches that began and ended while the updates ran

    def searcher():
        try:
            while not stop.is_set():
                dead = removed
                began = updating.is_set()
                _, ids = index.search(queries[:8], 10, threads=1)
                assert not np.isin(ids, dead).any() and (ids >= 0).all()
                during[0] += began and updating.is_set()
                started.set()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            started.set()

    t = threading.Thread(target=searcher)
    t.start()
    started.wait(60)
    try:
        updating.set()
        for c in range(4):
            gone = np.arange(c * 250, (c + 1) * 250)
            index.remove(gone)
            removed = np.union1d(removed, gone)
            index.add(base[2000 + c * 250:2000 + (c + 1) * 250], np.arange(2000 + c * 250, 2000 + (c + 1) * 250))
        updating.clear()
    finally:
        stop.set()
        t.join()
        index.wait()
    assert not errors, errors[0]
    assert during[0] > 0, "no search ran while the index was being updated"
    assert live_recall(index, base, queries, np.arange(1000, 3000), L=64) >= 0.95


def test_streaming_merge_folds_recent_inserts_and_deletes(wordnet, tmp_path):
    """FreshDiskANN's system: inserts go to a small in-memory index, deletes to the disk index's delete list;
    searches see both; merge() folds them into the disk graph; searches during the merge see no deleted id."""
    base, queries = wordnet
    disk = VamanaDiskIndex(base.shape[1], "cosine", R=24, L_build=48, codec=_pq(32), storage_dir=str(tmp_path))
    disk.add(base[:2500])
    stream = StreamingVamanaIndex(disk, merge_threshold=10_000)
    stream.add(base[2500:3200], np.arange(2500, 3200))
    gone = np.concatenate([np.arange(0, 2500, 10), np.arange(2500, 3200, 10)])  # from both parts
    stream.remove(gone)
    with pytest.raises(UnknownIdError):
        stream.remove([gone[0]])
    assert len(stream.front) == 700 - 70 and disk.graph_stats()["deleted"] == 250
    live = np.setdiff1d(np.arange(3200), gone)
    assert len(stream) == live.size
    _, truth = numpy_knn(base[live], queries, 10, "cosine")
    _, found = stream.search(queries, 10, L=64)
    assert not np.isin(found, gone).any()
    assert recall(found, live[truth]) >= 0.95
    errors: list[BaseException] = []
    stop, started, merging = threading.Event(), threading.Event(), threading.Event()
    during = [0]  # searches that began and ended while the merge ran

    def searcher():
        try:
            while not stop.is_set():
                began = merging.is_set()
                _, ids = stream.search(queries[:8], 10, threads=1)
                assert not np.isin(ids, gone).any() and (ids >= 0).all()
                assert all(np.unique(row).size == 10 for row in ids)
                during[0] += began and merging.is_set()
                started.set()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            started.set()

    t = threading.Thread(target=searcher)
    t.start()
    started.wait(60)
    try:
        merging.set()
        stream.merge()
        merging.clear()
    finally:
        stop.set()
        t.join()
    assert not errors, errors[0]
    assert during[0] > 0, "no search ran during the merge"
    assert len(stream.front) == 0 and len(disk) == live.size
    assert disk.graph_stats()["deleted"] == 0 and dead_links(disk) == 0
    _, found = stream.search(queries, 10, L=64)
    assert recall(found, live[truth]) >= 0.95
    np.testing.assert_array_equal(np.sort(stream.ids), live)


def test_disk_mode_copy_retrain_and_vectors_kept_in_a_file(wordnet, tmp_path):
    """What a vamana-disk database collection does: merges into a copy (the original unchanged), trains its codec
    again once it outgrew the rows it was trained on, and keeps vectors and links in a file after a restart."""
    base, queries = wordnet
    index = VamanaDiskIndex(base.shape[1], "cosine", R=24, L_build=48, codec="pq48", storage_dir=str(tmp_path))
    index.add(base[:300])
    assert index.trained_rows == 300 and not index.wants_retraining()
    grown = index.copy()
    grown.add(base[300:3000], np.arange(300, 3000))
    assert len(index) == 300 and len(grown) == 3000 and _file_backed(grown._g.vectors)
    assert grown.wants_retraining()
    old_codes = grown._g.codes[:3000].copy()
    before = live_recall(grown, base, queries, np.arange(3000), L=32)
    grown.retrain()
    assert grown.trained_rows == 3000 and not grown.wants_retraining()
    assert (grown._g.codes[:3000] != old_codes).any()
    np.testing.assert_array_equal(index._g.codes[:300], old_codes[:300])  # the original keeps its codes
    assert live_recall(grown, base, queries, np.arange(3000), L=32) >= max(before, 0.9)
    path = tmp_path / "d.sdx"
    grown.save(path)
    loaded = VamanaDiskIndex.load(path, mmap=False)
    assert loaded.trained_rows == 3000 and not _file_backed(loaded._g.vectors)
    loaded.keep_vectors_in(str(tmp_path))
    assert _file_backed(loaded._g.vectors) and _file_backed(loaded._g.adj)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], grown.search(queries, 10)[1])


@pytest.mark.parametrize("disk", [False, True])
@pytest.mark.parametrize("deleted", [0.5, 0.95])
def test_search_with_most_nodes_tombstoned(wordnet, tmp_path, disk, deleted):
    """A database collection consolidates its graph only when it merges, so a search may meet a graph that is
    mostly tombstones: they route the walk but must not crowd the live nodes out of its pool (at 95% deleted a
    pool of 64 found 0.29 of the true 10, and fewer than k results)."""
    base, queries = wordnet
    index = (VamanaDiskIndex(384, "cosine", R=16, L_build=40, consolidate_threshold=1.0, codec=_pq(32),
                             storage_dir=str(tmp_path)) if disk else
             VamanaIndex(384, "cosine", R=16, L_build=40, consolidate_threshold=1.0))
    index.add(base[:3000])
    gone = np.random.default_rng(3).choice(3000, int(deleted * 3000), replace=False)
    index.remove(gone)
    live = np.setdiff1d(np.arange(3000), gone)
    _, found = index.search(queries, 10, L=64)
    assert (found >= 0).all() and not np.isin(found, gone).any()
    assert live_recall(index, base, queries, live, L=64) >= 0.95
