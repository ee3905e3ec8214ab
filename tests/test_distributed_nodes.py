"""Distributed collections on several Ray nodes (simulated on this machine by ``ray.cluster_utils.Cluster``): the
replicas of a shard are placed on different nodes (and reopened on the node that holds their files), and when a
node goes, the other replicas answer and repair places a new copy on a live node."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from simdex import datasets

ray = pytest.importorskip("ray")  # in the test extra: CI runs these

from ray.cluster_utils import Cluster  # noqa: E402

from simdex import distributed  # noqa: E402

N = 600


@pytest.fixture(scope="module")
def two_nodes():
    if ray.is_initialized():  # (another module's local Ray)
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def test_replicas_sit_on_different_nodes_and_survive_one_going(two_nodes, tmp_path, wordnet_small):
    cluster, worker = two_nodes
    ids = [f"r{i}" for i in range(N)]
    x = np.ascontiguousarray(wordnet_small.base[:N], np.float32)
    query = wordnet_small.queries[0]
    db = distributed.connect(tmp_path / "db", auto_repair=False)
    col = db.create_collection("spread", 384, "cosine", index="flat", shards=2, replicas=2)
    assert all(len(set(nodes)) == 2 for nodes in col._nodes)  # each shard: one replica per node
    col.upsert(ids, x)
    placed = [list(nodes) for nodes in col._nodes]
    db.close()
    # reopened (as a new process would): each replica starts on the node that holds its files
    db = distributed.connect(tmp_path / "db", auto_repair=False)
    col = db.get_collection("spread")
    assert col._nodes == placed and not col._dead.any()
    expected = [h["id"] for h in col.search(query, 10)]
    assert expected == [ids[i] for i in datasets.brute_force_knn(x, query[None], 10, "cosine")[0]]
    gone = worker.node_id
    lost = sorted((s, r) for s in range(2) for r in range(2) if col._nodes[s][r] == gone)
    cluster.remove_node(worker)  # the machine goes: one replica of every shard with it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every shard still has a live replica: no partial results
        assert [h["id"] for h in col.search(query, 10)] == expected
        col.upsert(["late-1", "late-2", "late-3"], x[:3])  # acknowledged by each shard's live replica
    assert sorted(col.repair()) == lost
    assert all("copy" in how["from"] for how in col.last_repair)  # their files went with the node
    assert gone not in {node for nodes in col._nodes for node in nodes}
    every = ids + ["late-1", "late-2", "late-3"]
    for s in range(2):
        for r in range(2):
            held = ray.get(col._actors[s][r].read.remote("count", (), {}))
            assert held == sum(distributed.shard_of(i, 2) == s for i in every)
    assert col.count() == N + 3
    db.close()
