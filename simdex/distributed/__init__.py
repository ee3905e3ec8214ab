"""Distributed collections on Ray (extra ``simdex[ray]``).

A distributed collection is split into ``shards`` by a stable hash of each record's id; each shard is kept by
``replicas`` Ray actors, each an embedded simdex database (its own log, checkpoints and index) in its own folder.
Writes go to every replica of the record's shard and return when all of them have made them durable; a search
goes to one live replica of every shard (the least busy) and the shards' best are merged exactly, so with flat
indexes the answer equals a single-node collection's. The collection API is the one of
:class:`simdex.store.api.CollectionAPI`::

    from simdex import distributed
    db = distributed.connect(path="/data/simdex", ray_address="auto")   # or None: a local Ray
    col = db.create_collection("docs", dim=384, shards=4, replicas=2)
    col.upsert(ids, vectors, metadatas, documents)
    hits = col.search(query, k=10, where={"lang": "en"})

Ray is the cluster layer (actors, placement groups that spread a shard's replicas over nodes, failure detection):
simdex adds no RPC or membership of its own. A dead replica is brought back by
:meth:`DistributedCollection.repair` (in the background by default) from its own files and the writer's journal,
or else from a copy of a live one; a read waiting on a slow replica is hedged to another. See docs/distributed.md.
``simdex serve --ray`` serves a distributed database over HTTP.
"""

from __future__ import annotations

from .collection import DistributedCollection, DistributedDatabase, PartialResultsWarning, connect, shard_of

__all__ = ["connect", "DistributedDatabase", "DistributedCollection", "PartialResultsWarning", "shard_of"]
