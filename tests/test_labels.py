"""LabelIndex: k-NN restricted to one label, against brute force over the label's points, on real labels."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from simdex import InvalidInputError, LabelIndex, UnknownIdError
from simdex.datasets import data_dir

N = 4000


@pytest.fixture(scope="module")
def fashion_labelled(fashion_small):
    """Fashion-MNIST images with their real class (0-9, ~10% each) and a coarse group label (100: classes 0-5,
    ~60%; 101: the rest), so that both the exact path (a class) and the graph path (a group) are exercised."""
    raw = gzip.open(data_dir() / "fashion-mnist" / "train-labels-idx1-ubyte.gz").read()
    classes = np.frombuffer(raw, np.uint8, offset=8)[:N].astype(np.int64)
    groups = np.where(classes < 6, 100, 101)
    base = fashion_small.base[:N]
    index = LabelIndex(base.shape[1], "l2", M=16, ef_construction=100)
    index.add(base, labels=[[c, g] for c, g in zip(classes, groups)])
    return index, base, fashion_small.queries, classes, groups


@pytest.fixture(scope="module")
def wordnet_pos(wordnet_small):
    """3,000 WordNet glosses spread over the whole base (the file lists nouns first, then verbs, then adjectives)
    with their part of speech (2,288 "noun", 383 "verb", 329 "adj"), and query vectors."""
    from simdex.datasets import wordnet_records
    rows = np.linspace(0, 107_658, 3000).astype(np.int64)
    _, metas, _ = wordnet_records()
    vectors = np.load(data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")
    base = np.ascontiguousarray(vectors[rows], np.float32)
    return base, [metas[r]["pos"] for r in rows], wordnet_small.queries[:60]


def members_truth(base, queries, member, k, metric="l2"):
    x = base.astype(np.float64)
    out = []
    for i, q in enumerate(queries.astype(np.float64)):
        rows = np.flatnonzero(member[i])
        if metric == "l2":
            d = ((x[rows] - q) ** 2).sum(1)
        else:
            xn = x[rows] / np.linalg.norm(x[rows], axis=1, keepdims=True)
            d = -(xn @ (q / np.linalg.norm(q)))
        out.append(rows[np.argsort(d, kind="stable")[:k]])
    return out


def recall(found, truth):
    return float(np.mean([np.isin(t, f).sum() / len(t) for f, t in zip(found, truth)]))


def test_group_labels_use_the_graph_and_reach_recall(fashion_labelled):
    index, base, queries, _, groups = fashion_labelled
    qlab = np.where(np.arange(queries.shape[0]) % 2 == 0, 100, 101)
    # the 60% label has its own graph, the 40% one (1,600 points, under label_graph_min) is scanned exactly
    assert index.label_graphs == {100: index.label_count(100)}
    d, i = index.search(queries, 10, label=qlab, ef=32)
    member = groups[None, :] == qlab[:, None]
    for r in range(queries.shape[0]):
        assert member[r, i[r]].all(), "a result does not carry the query's label"
    assert np.all(np.diff(d, axis=1) >= 0)
    assert recall(i, members_truth(base, queries, member, 10)) >= 0.95
    # a filter on top of the label: its graph's own filtered search (group 100) or the exact scan (group 101)
    allow = np.flatnonzero(np.arange(base.shape[0]) % 3 == 0)
    _, i = index.search(queries, 10, label=qlab, ef=32, filter=allow)
    member &= (np.arange(base.shape[0]) % 3 == 0)[None, :]
    assert all(member[r, i[r][i[r] >= 0]].all() for r in range(queries.shape[0]))
    assert recall(i, members_truth(base, queries, member, 10)) >= 0.95


def test_class_labels_are_exact(fashion_labelled):
    index, base, queries, classes, _ = fashion_labelled
    qlab = np.arange(queries.shape[0]) % 10
    _, i = index.search(queries, 10, label=qlab)
    member = classes[None, :] == qlab[:, None]
    assert recall(i, members_truth(base, queries, member, 10)) == 1.0
    # one label for every query, and a label nobody carries
    _, one = index.search(queries[:5], 10, label=3)
    assert (classes[one] == 3).all()
    d, none = index.search(queries[:2], 10, label=7777)
    assert (none == -1).all() and np.isinf(d).all()


def test_wordnet_part_of_speech_labels(wordnet_pos):
    base, pos_names, queries = wordnet_pos
    codes = {name: c for c, name in enumerate(sorted(set(pos_names)))}
    pos = np.array([codes[p] for p in pos_names])
    index = LabelIndex(base.shape[1], "cosine", M=16, ef_construction=100, label_graph_min=300)
    index.add(base, labels=pos)
    assert set(index.label_graphs) == set(codes.values())  # every part of speech has 300+ glosses here
    qlab = pos[np.random.default_rng(0).integers(0, len(pos), queries.shape[0])]
    _, i = index.search(queries, 10, label=qlab, ef=48)
    member = pos[None, :] == qlab[:, None]
    assert all(member[r, i[r][i[r] >= 0]].all() for r in range(queries.shape[0]))
    assert recall(i, members_truth(base, queries, member, 10, "cosine")) >= 0.95


def test_remove_save_load_and_bad_input(fashion_labelled, tmp_path):
    _, base, queries, classes, groups = fashion_labelled
    index = LabelIndex(base.shape[1], "l2", M=16, ef_construction=100, label_graph_min=1000)
    ids = np.arange(N) * 2 + 5
    both = [[c, g] for c, g in zip(classes, groups)]
    # in two calls: the first builds group 100's graph (~1,200 points), the second inserts into it and builds
    # group 101's from all its points once it passes 1,000
    index.add(base[:2000], ids[:2000], labels=both[:2000])
    assert index.label_graphs == {100: int((groups[:2000] == 100).sum())}
    index.add(base[2000:], ids[2000:], labels=both[2000:])
    assert index.label_graphs == {100: int((groups == 100).sum()), 101: int((groups == 101).sum())}
    _, before = index.search(queries, 10, label=100, ef=32)
    gone = np.unique(before[:, :3])
    index.remove(gone)
    assert index.label_count(100) == int((groups == 100).sum()) - gone.size == index.label_graphs[100]
    d, after = index.search(queries, 10, label=100, ef=32)
    assert not np.isin(after, gone).any()
    assert np.isin(after, ids[groups == 100]).all()
    path = tmp_path / "labels.sdx"
    index.save(path)
    again = LabelIndex.load(path)
    d2, i2 = again.search(queries, 10, label=100, ef=32)
    np.testing.assert_array_equal(i2, after)
    np.testing.assert_allclose(d2, d)
    assert again.label_graphs == index.label_graphs
    np.testing.assert_array_equal(again.search(queries, 10, label=3)[1], index.search(queries, 10, label=3)[1])
    assert list(again.get_labels(ids[0])) == sorted([classes[0], groups[0]])
    with pytest.raises(UnknownIdError):
        again.get_labels(-3)
    # bad labels: refused with the problem named, nothing stored
    n_before = len(index)
    for bad, words in (([-1] * 3, "must be in"), ([1, 2], "one entry per vector"), ([0.5, 1, 2], "integers"),
                       ([[1], [2, -4], [0]], "labels[1]")):
        with pytest.raises(InvalidInputError, match=words.replace("[", r"\[").replace("]", r"\]")):
            index.add(base[:3], np.array([1, 3, 7]) * 100001, labels=bad)
    assert len(index) == n_before
    with pytest.raises(InvalidInputError, match="one integer per query"):
        index.search(queries[:4], 10, label=[1, 2])


def test_collection_label_field_answers_equality_filters(tmp_path, wordnet_pos):
    import simdex
    base, pos_names, queries = wordnet_pos
    n = base.shape[0]
    metas = [{"pos": p} for p in pos_names]
    for i in range(0, n, 97):  # some records have no string in the field: never in a label graph
        metas[i] = {"pos": 3} if i % 2 else {"other": "noun"}
    ids = [f"g{i}" for i in range(n)]
    path = tmp_path / "db"

    def truth(pos, exclude=()):
        member = np.array([m.get("pos") == pos and ids[i] not in exclude for i, m in enumerate(metas)])
        return [[ids[j] for j in row] for row in members_truth(base, queries, np.tile(member, (len(queries), 1)), 10,
                                                                "cosine")]

    def hit_ids(rows):
        return [[h["id"] for h in row] for row in rows]

    counts = {p: sum(m.get("pos") == p for m in metas) for p in ("adj", "noun", "verb")}
    # the cutoff sits between the rarest value and the others, whatever the slice holds: the rarest value is
    # scanned exactly, every other one gets its own graph
    cutoff = sorted(counts.values())[1]
    rarest = min(counts, key=counts.get)
    assert rarest not in ("noun", "verb")  # the checks below walk the graphs of these two
    with simdex.connect(path, background=False, sync="off") as db:
        col = db.create_collection("glosses", dim=384, label_field="pos", M=12, ef_construction=80)
        col.label_graph_min = cutoff
        col.upsert(ids, base, metas)
        with pytest.raises(InvalidInputError, match="label_field"):
            db.create_collection("bad", dim=384, label_field="a b")
        with pytest.raises(simdex.CollectionExistsError):
            db.create_collection("glosses", dim=384, label_field="lang", exist_ok=True, M=12, ef_construction=80)
        exact = hit_ids(col.search_batch(queries, k=10, where={"pos": "verb"}))  # no graph yet: the SQL path
        assert exact == truth("verb")
        assert col.needs_label_graphs()
        db.optimize()
        assert col.stats()["label_graphs"] == {p: c for p, c in counts.items() if c >= cutoff}
        assert len(col.stats()["label_graphs"]) == 2
        assert not col.needs_label_graphs()
        sql_filters = []
        allowed = col._allowed
        col._allowed = lambda where: sql_filters.append(where) or allowed(where)
        for where, pos in (({"pos": "noun"}, "noun"), ({"pos": {"$eq": "verb"}}, "verb")):
            got = hit_ids(col.search_batch(queries, k=10, where=where))
            assert recall(got, truth(pos)) >= 0.95
            assert all(metas[int(i[1:])]["pos"] == pos for row in got for i in row)
        assert sql_filters == [], "an equality on the label field went through the SQL allow-list"
        # a value without a graph (too few records) and other filters take the SQL path and stay exact
        assert hit_ids(col.search_batch(queries, k=10, where={"pos": rarest})) == truth(rarest)
        assert hit_ids(col.search_batch(queries, k=10, where={"pos": 3}))[0] == \
            [ids[j] for j in members_truth(base, queries[:1], np.array([[m.get("pos") == 3 for m in metas]]), 10,
                                           "cosine")[0]]
        assert len(sql_filters) == 2
        # upserts move a record between values, deletes remove it: both seen at once by the graphs
        assert metas[5]["pos"] == "noun"
        col.upsert(["g5"], base[[5]], [{"pos": "verb"}])
        assert col.search(base[5], k=1, where={"pos": "verb"})[0]["id"] == "g5"
        # (a stale rid left in a graph would cost a hit: the records of stale rids are not found)
        near = [h["id"] for h in col.search(base[5], k=10, where={"pos": "noun"})]
        assert "g5" not in near and len(near) == 10
        col.delete(["g5"])
        near = [h["id"] for h in col.search(base[5], k=10, where={"pos": "verb"})]
        assert "g5" not in near and len(near) == 10
        after = hit_ids(col.search_batch(queries, k=10, where={"pos": "noun"}))
        metas[5] = {}
    # reopened: no graph until the optimizer builds them again; the SQL path answers meanwhile
    with simdex.connect(path, background=False, sync="off") as db:
        col = db.get_collection("glosses")
        assert col.label_field == "pos" and col.stats()["label_graphs"] == {}
        assert hit_ids(col.search_batch(queries, k=10, where={"pos": "noun"})) == truth("noun", exclude={"g5"})
        col.label_graph_min = cutoff
        db.optimize()
        assert set(col.stats()["label_graphs"]) == {p for p, c in counts.items() if c >= cutoff}
        assert recall(hit_ids(col.search_batch(queries, k=10, where={"pos": "noun"})), after) >= 0.95


def test_collection_label_graphs_keep_writes_made_during_the_build(tmp_path, wordnet_small):
    import simdex
    base = wordnet_small.base
    n = 1200
    ids = [f"r{i}" for i in range(n)]
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        col = db.create_collection("docs", dim=384, label_field="lang", M=8, ef_construction=40)
        col.label_graph_min = 100
        col.upsert(ids, base[:n], [{"lang": "de" if i % 3 else "en"} for i in range(n)])
        side = col._label_side
        build = side.build
        calls = []

        def build_with_writes(snapshot, threads):
            # runs outside the collection's locks, between the cut and the swap: these writes must be replayed
            # into the new graphs
            if not calls:
                calls.append(1)
                col.upsert(["late"], base[[n]], [{"lang": "en"}])
                col.delete(["r0", "r1"])
                col.upsert(["r2"], base[[2]], [{"lang": "en"}])  # was "de"
            return build(snapshot, threads)

        side.build = build_with_writes
        assert col.build_label_graphs()
        en = sum(1 for i in range(n) if i % 3 == 0) - 1 + 2  # r0 deleted; late and r2 added
        graphs = col.stats()["label_graphs"]
        assert graphs["en"] == en and graphs["de"] == (n - (n + 2) // 3) - 2  # r1, r2 left "de"
        assert col.search(base[n], k=1, where={"lang": "en"})[0]["id"] == "late"
        assert [h["id"] for h in col.search(base[2], k=1, where={"lang": "en"})] == ["r2"]
        for gone, lang in ((0, "en"), (1, "de"), (2, "de")):
            near = [h["id"] for h in col.search(base[gone], k=5, where={"lang": lang})]
            assert f"r{gone}" not in near and len(near) == 5
