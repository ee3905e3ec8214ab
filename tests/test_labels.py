"""LabelIndex: k-NN restricted to one label, against brute force over the label's points, on real labels."""

from __future__ import annotations

import gzip
import json

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


def test_wordnet_part_of_speech_labels(wordnet_small):
    n = 3000
    pos_names = []
    with gzip.open(data_dir() / "wordnet-minilm" / "glosses.jsonl.gz", "rt") as fh:
        for line in fh:
            pos_names.append(json.loads(line)["id"].split(":")[1])
            if len(pos_names) == n:
                break
    codes = {name: c for c, name in enumerate(sorted(set(pos_names)))}
    pos = np.array([codes[p] for p in pos_names])
    base, queries = wordnet_small.base[:n], wordnet_small.queries
    index = LabelIndex(base.shape[1], "cosine", M=16, ef_construction=100)
    index.add(base, labels=pos)
    qlab = pos[np.random.default_rng(0).integers(0, n, queries.shape[0])]
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
