"""A collection's embedder: recorded with the collection, loaded on first use, never mixed with another model."""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import check_texts
from ..errors import InvalidInputError, TruncatedTextWarning

if TYPE_CHECKING:
    from ..embed import Embedder


def embedder_info(embedder: Embedder) -> dict[str, Any]:
    """What a collection records of its embedder, to rebuild it on open and to refuse another model."""
    return {"name": embedder.name, "dim": int(embedder.dim), "fingerprint": embedder.fingerprint,
            "max_tokens": embedder.max_tokens, "normalized": bool(embedder.normalized)}


def warn_truncated(notes: list[str]) -> None:
    for note in notes:
        warnings.warn(TruncatedTextWarning(note), stacklevel=3)


class EmbedderSlot:
    """The embedder of collection ``collection`` as recorded (``info``; None: the collection has none). The model
    is loaded by its name on first use, or attached (checked against the record: name, dimension and a
    fingerprint of its weights)."""

    def __init__(self, collection: str, info: dict[str, Any] | None) -> None:
        self.collection, self.info = collection, info
        self._model: Embedder | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Embedder:
        if self._model is None:
            info = self.info
            if info is None:
                raise InvalidInputError(f"collection {self.collection!r} has no embedder; create it with "
                                        f"embedder='minilm' to store and search text")
            with self._lock:
                if self._model is None:
                    from ..embed import get_embedder
                    try:
                        model = get_embedder(info["name"])
                    except Exception:  # not a name simdex knows, or its package or model is missing here
                        raise InvalidInputError(
                            f"collection {self.collection!r} embeds with {info['name']!r}, which simdex cannot "
                            f"load by name; attach it: db.get_collection({self.collection!r}, embedder=...) or "
                            f"simdex.connect(path, embedders={{{info['name']!r}: ...}})") from None
                    self.check(model)
                    self._model = model
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def attach(self, model: Embedder) -> None:
        self.check(model)
        self._model = model

    def check(self, model: Embedder) -> None:
        info = self.info
        if info is None:
            raise InvalidInputError(f"collection {self.collection!r} has no embedder")
        got = embedder_info(model)
        if any(got[key] != info[key] for key in ("name", "dim", "fingerprint")):
            raise InvalidInputError(
                f"collection {self.collection!r} was embedded with {info['name']!r} (dim {info['dim']}, weights "
                f"{info['fingerprint']}); the embedder given is {got['name']!r} (dim {got['dim']}, weights "
                f"{got['fingerprint']}): vectors of different models must not be mixed")

    def vectors_for(self, ids: Any, vectors: Any, documents: Any) -> Any:
        """``vectors``, with the rows that are None (or all, when it is None) embedded from ``documents``."""
        partial = isinstance(vectors, (list, tuple)) and any(v is None for v in vectors)
        if vectors is not None and not partial:
            return vectors
        if self.info is None:
            raise InvalidInputError(f"vectors is required: collection {self.collection!r} has no embedder (create "
                                    f"it with embedder='minilm' to upsert documents alone)")
        if documents is None:
            raise InvalidInputError("give vectors, or documents for the collection's embedder to embed")
        docs = check_texts(documents, "documents", allow_none=True)
        n = len(ids) if isinstance(ids, (list, tuple)) else 1
        if len(docs) != n or (partial and len(vectors) != n):
            raise InvalidInputError(f"documents{' and vectors' if partial else ''} must have one entry per id ({n})")
        rows = [i for i, v in enumerate(vectors) if v is None] if partial else list(range(n))
        empty = [i for i in rows if docs[i] is None]
        if empty:
            raise InvalidInputError(f"documents[{empty[0]}] is None and there is no vector for ids[{empty[0]}]: "
                                    f"nothing to embed")
        embedded = self.model([docs[i] for i in rows])
        if not partial:
            return embedded
        out = list(vectors)
        for j, i in enumerate(rows):
            out[i] = embedded[j]
        return out

    def queries(self, texts: list[str], notes: list[str]) -> np.ndarray:
        """(n, dim) query vectors of ``texts``; a note for each text the model truncates."""
        model = self.model
        if model.max_tokens:
            counts = model.count_tokens(texts)
            for i in np.flatnonzero(counts > model.max_tokens):
                notes.append(f"query {int(i)} has {int(counts[i])} tokens; {model.name} reads only the first "
                             f"{model.max_tokens}")
        return model(texts, progress=False)
