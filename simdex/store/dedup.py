"""Near-duplicate control on write: ``create_collection(..., dedup={...})``.

Each upserted record's text (its document, or a string metadata field) is shingled and sketched by MinHash before
the collection's writer lock is taken (:meth:`DedupSide.sketch`). Under the lock its band keys are looked up in the
collection's LSH index and among the earlier rows of the same batch, and every candidate is verified by exact
Jaccard of the shingle sets: the stored candidates' texts are read back from the metadata store and shingled again,
so no shingle sets are kept in memory. A record found to nearly duplicate another is then refused (``"reject"``: the
whole batch, with :class:`~simdex.errors.DuplicateDocumentError` naming each duplicate and what it duplicates),
marked (``"flag"``: metadata key ``duplicate_of`` holds the other record's id, in the logged write, so it is as
durable as the record) or written as it is (``"keep"``: only counted, in ``stats()["dedup"]``).

The LSH index is a side index keyed by row id (:class:`~simdex.store.sides.SideIndex`), fed by every write and
rebuilt from the stored texts when the collection opens, like BM25. With ``bloom=True`` an LSHBloom filter per band
replaces it, for very large collections: fixed memory (sized for ``capacity`` records), but no verification
against stored records (a band match is a duplicate), no id of the record duplicated, and deleted records are not
forgotten until the collection is reopened.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .._validate import check_positive_int
from ..errors import DuplicateDocumentError, InvalidInputError, InvalidTypeError
from ..sets import LSHBloom, MinHash, MinHashLSH, Shingler
from ..sets.exact import pair_jaccard
from ..sets.shingle import HashedSets
from .records import encode_metadata
from .sides import SideIndex, field_values, remove_present

ACTIONS = ("reject", "flag", "keep")
FLAG_KEY = "duplicate_of"
DEFAULTS: dict[str, Any] = {"field": "document", "threshold": 0.9, "on_duplicate": "flag", "ngram": 5,
                            "unit": "word", "num_perm": 128, "bloom": False, "capacity": 10_000_000,
                            "fp_rate": 1e-4, "seed": 1}
# MinHash LSH needs a threshold below 1; exact verification then applies the collection's own (1 = same sets)
_LSH_MAX_THRESHOLD = 0.99
_BUILD_CHUNK = 50_000
_EPS = 1e-9


def check_dedup(spec: Any) -> dict[str, Any] | None:
    """The dedup configuration with its defaults filled in, or None; errors name the bad key."""
    if spec is None or spec is False:
        return None
    if not isinstance(spec, dict):
        raise InvalidTypeError(f"dedup must be a dict such as {{'field': 'document', 'threshold': 0.9, "
                               f"'on_duplicate': 'flag'}}; got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise InvalidInputError(f"unknown dedup option(s) {unknown}; dedup takes {list(DEFAULTS)}")
    out = {**DEFAULTS, **spec}
    from .filters import _FIELD
    if not isinstance(out["field"], str) or not _FIELD.match(out["field"]):
        raise InvalidInputError(f"dedup field must be 'document' or a metadata field name; got {out['field']!r}")
    t = out["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t <= 1:
        raise InvalidInputError(f"dedup threshold must be a number in (0, 1] (the Jaccard similarity of the "
                                f"shingle sets at which two texts are duplicates); got {t!r}")
    out["threshold"] = float(t)
    if out["on_duplicate"] not in ACTIONS:
        raise InvalidInputError(f"dedup on_duplicate must be one of {ACTIONS}; got {out['on_duplicate']!r}")
    if not isinstance(out["bloom"], bool):
        raise InvalidInputError(f"dedup bloom must be True or False; got {out['bloom']!r}")
    for key in ("ngram", "num_perm", "capacity", "seed"):
        check_positive_int(out[key], f"dedup {key}", minimum=0 if key == "seed" else 1)
    DedupSide(out, np.zeros(0, np.int64), [])  # the remaining values (unit, fp_rate, ...) are checked by the parts
    return out


class Sketch(NamedTuple):
    """A batch's texts ready for lookup: ``rows`` (positions in the batch of the texts with shingles), their
    shingle ``sets`` and band ``keys`` (len(rows), bands)."""

    rows: np.ndarray
    sets: HashedSets
    keys: np.ndarray


def _stack(a: HashedSets, b: HashedSets) -> HashedSets:
    return HashedSets(np.concatenate([a.indptr, b.indptr[1:] + a.indptr[-1]]),
                      np.concatenate([a.values, b.values.astype(a.values.dtype, copy=False)]))


class DedupSide(SideIndex):
    """The LSH index over a collection's texts, and the check of a batch against it (see the module)."""

    def __init__(self, spec: dict[str, Any], rids: np.ndarray, texts: list[str | None]) -> None:
        super().__init__()
        self.spec = spec
        self.field: str = spec["field"]
        self.threshold: float = spec["threshold"]
        self.action: str = spec["on_duplicate"]
        self._shingler = Shingler(spec["ngram"], unit=spec["unit"], seed=spec["seed"])
        self._minhash = MinHash(spec["num_perm"], seed=spec["seed"])
        lsh_threshold = min(self.threshold, _LSH_MAX_THRESHOLD)
        self.index: MinHashLSH | LSHBloom
        if spec["bloom"]:
            self.index = LSHBloom(lsh_threshold, spec["num_perm"], capacity=spec["capacity"],
                                  fp_rate=spec["fp_rate"], seed=spec["seed"])
        else:
            self.index = MinHashLSH(lsh_threshold, spec["num_perm"], seed=spec["seed"])
        self.found = 0  # duplicates found since the collection opened
        self._prepared: tuple[np.ndarray, Sketch] | None = None
        for start in range(0, len(texts), _BUILD_CHUNK):
            self._insert(rids[start:start + _BUILD_CHUNK], self.sketch(texts[start:start + _BUILD_CHUNK]))

    def texts_of(self, metadatas: list[str] | None, documents: list[str | None] | None, n: int
                 ) -> list[str | None]:
        """Each record's text to compare: its document, or the string value of the metadata field."""
        if self.field == "document":
            return list(documents) if documents is not None else [None] * n
        if metadatas is None:
            return [None] * n
        return [v if isinstance(v, str) else None for v in field_values(metadatas, self.field)]

    def sketch(self, texts: list[str | None]) -> Sketch:
        """Shingles and band keys of ``texts``; texts without shingles (None, empty, no words) are left out:
        they duplicate nothing."""
        rows = np.array([j for j, t in enumerate(texts) if t], np.int64)
        sets = self._shingler([texts[j] for j in rows])
        has = sets.sizes() > 0
        if not has.all():
            rows, sets = rows[has], sets.take(np.flatnonzero(has))
        keys = self.index.banding.keys(self._minhash.signatures(sets)) if rows.size \
            else np.zeros((0, self.index.bands), np.uint64)
        return Sketch(rows, sets, keys)

    def _insert(self, rids: np.ndarray, sketch: Sketch) -> None:
        if not sketch.rows.size:
            return
        if isinstance(self.index, LSHBloom):
            self.index.insert_keys(sketch.keys)
        else:
            self.index.insert_keys(np.ascontiguousarray(sketch.keys), rids[sketch.rows])

    # ---- the check of a batch (under the collection's writer lock) -----------------------------------------------
    def check(self, sketch: Sketch, ids: list[str], metadatas: list[str], rids: np.ndarray, replaced: np.ndarray,
              fetch: Callable[[list[int]], dict[int, tuple[str, str, str | None]]]) -> list[str]:
        """Apply the collection's ``on_duplicate`` to a batch about to be written with row ids ``rids``: returns
        its metadatas (flagged ones with ``duplicate_of``), or raises DuplicateDocumentError ("reject"). Records
        the sketch so that :meth:`add` of the same write does not sketch again. ``replaced``: the row ids this
        batch replaces (never duplicates of the new versions)."""
        self._prepared = None
        found = self._find(sketch, ids, replaced, fetch)
        self.found += len(found)
        if found and self.action == "reject":
            shown = ", ".join(f"{ids[j]!r} (of {'an earlier record' if of is None else repr(of)})"
                              for j, of in list(found.items())[:5])
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            raise DuplicateDocumentError(
                f"{len(found)} record(s) nearly duplicate others (Jaccard >= {self.threshold} on the "
                f"{self.field!r} text): {shown}{more}; nothing was written (the collection rejects duplicates)",
                {ids[j]: of for j, of in found.items()})
        if found and self.action == "flag":
            metadatas = list(metadatas)
            for j, of in found.items():
                meta = json.loads(metadatas[j])
                meta[FLAG_KEY] = of if of is not None else True
                metadatas[j] = encode_metadata(meta, j)  # as every write encodes it (and within its size limit)
        self._prepared = (rids, sketch)
        return metadatas

    def _find(self, sketch: Sketch, ids: list[str], replaced: np.ndarray,
              fetch: Callable[[list[int]], dict[int, tuple[str, str, str | None]]]) -> dict[int, str | None]:
        """batch position -> id of the record it nearly duplicates (the most similar; None for a Bloom match)."""
        m = sketch.rows.shape[0]
        if m == 0:
            return {}
        best_sim = np.full(m, -1.0)
        best_of: list[str | None] = [None] * m
        # earlier rows of the same batch
        if m > 1:
            batch_lsh = MinHashLSH(self.index.threshold, self.index.num_perm,
                                   params=(self.index.bands, self.index.rows), seed=self.spec["seed"])
            batch_lsh.insert_keys(np.ascontiguousarray(sketch.keys), np.arange(m, dtype=np.int64))
            pairs = batch_lsh.candidate_pairs()
            if pairs.shape[0]:
                sims = pair_jaccard(sketch.sets, pairs)
                for (a, b), s in zip(pairs.tolist(), sims.tolist()):
                    if s >= self.threshold - _EPS and s > best_sim[b]:
                        best_sim[b], best_of[b] = s, ids[sketch.rows[a]]
        # stored records
        if isinstance(self.index, LSHBloom):
            matched = self.index.query_keys(sketch.keys) & (best_sim < 0)  # a named duplicate in the batch wins
            best_sim[matched] = 1.0
        elif len(self.index):
            indptr, cand = self.index.query_keys(np.ascontiguousarray(sketch.keys))
            owner = np.repeat(np.arange(m), np.diff(indptr))
            keep = ~np.isin(cand, replaced)
            owner, cand = owner[keep], cand[keep]
            if cand.size:
                unique, position = np.unique(cand, return_inverse=True)
                rows = fetch(unique.tolist())
                found = [rows.get(r) for r in unique.tolist()]
                texts = self.texts_of([f[1] if f else "{}" for f in found], [f[2] if f else None for f in found],
                                      len(found))
                stored = self._shingler([t or "" for t in texts])
                pairs = np.stack([owner, m + position.reshape(-1)], axis=1).astype(np.int64)
                sims = pair_jaccard(_stack(sketch.sets, stored), pairs)
                empty = stored.sizes() == 0  # two empty sets count as equal in pair_jaccard; not here
                for i, p, s in zip(owner.tolist(), position.reshape(-1).tolist(), sims.tolist()):
                    if found[p] is not None and not empty[p] and s >= self.threshold - _EPS and s >= best_sim[i]:
                        best_sim[i], best_of[i] = s, found[p][0]
        return {int(sketch.rows[i]): best_of[i] for i in np.flatnonzero(best_sim >= 0).tolist()}

    # ---- the side-index interface ----------------------------------------------------------------------------------
    def add(self, rids, vectors, metadatas, documents) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] is rids:
            sketch = prepared[1]
        else:  # replayed from the log on open, or a write that was not checked
            sketch = self.sketch(self.texts_of(metadatas, documents, rids.shape[0]))
        self._insert(rids, sketch)

    def remove(self, rids) -> None:
        if isinstance(self.index, MinHashLSH):
            remove_present(self.index, rids)

    def stats(self) -> dict[str, Any]:
        return {"dedup": {**self.spec, "duplicates_found": self.found, "index_bytes": self.index.nbytes}}


def collection_texts(collection: Any, field: str | None, batch_size: int) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) batches of a collection's records in id order, for :func:`simdex.sets.deduplicate` (``simdex
    dedup --collection``): their documents, or the string metadata ``field`` (records without one are left out)."""
    offset = 0
    while True:
        rows = collection.get(limit=batch_size, offset=offset, include=["documents", "metadatas"])
        if not rows:
            return
        offset += len(rows)
        if field is None:
            pairs = [(r["id"], r["document"]) for r in rows if r["document"] is not None]
        else:
            values = field_values([json.dumps(r["metadata"]) for r in rows], field)
            pairs = [(r["id"], v) for r, v in zip(rows, values) if isinstance(v, str)]
        yield [p[0] for p in pairs], [p[1] for p in pairs]
