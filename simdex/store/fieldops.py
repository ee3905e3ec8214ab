"""Changing a collection's named vector fields while it serves: add a field, fill it in the background from the
stored documents with its embedder, switch text queries to it once it is complete, drop the old one.

This is how a collection moves to a new embedding model without downtime (issue 23, part 5)::

    col.add_field("e5", embedder="st:intfloat/e5-small-v2")   # filled in the background; progress in stats()
    col.wait_for_field("e5")                                    # or poll stats()["fields"]["e5"]["fill"]
    col.use_field("e5")                                          # text queries now embed with e5 and search it
    col.drop_field("old")                                        # a named field; the main vector stays

While a field fills, every upsert embeds its documents with the field's model too (so no record is missed), and
text queries go on using the old field. The fill writes through the log like any write (``FIELD_VALUES``
records: the values of one field for stored records that are still current), so it is durable and a restart
resumes it where it stopped. :class:`FieldOps` is the part of :class:`~simdex.store.Collection` that does this.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import numpy as np

from ..errors import InvalidInputError, StorageError
from ..fileformat import write_json
from . import records as rec
from ._io import storage_error
from .api import MAIN_FIELD
from .embedding import EmbedderSlot, embedder_info
from .fields import check_field_values, check_fields, embedder_spec, new_field_side

log = logging.getLogger("simdex.store")

FILL_BATCH = 256  # documents embedded per logged write of a fill


class FieldOps:
    """Field management and background fills (mixed into :class:`~simdex.store.Collection`)."""

    # ---- set up on open ------------------------------------------------------------------------------------------
    def _open_field_embedders(self) -> None:
        """An embedder slot per field that has an embedder; fills of the incomplete ones resume."""
        self._field_embedding = {name: EmbedderSlot(f"{self.name}.{name}", spec["embedder"])
                                 for name, spec in self.fields.items() if spec.get("embedder")}
        self._fills: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._fill_errors: dict[str, str] = {}
        if not self.read_only:
            for name in self._field_embedding:
                self._start_fill(name)

    def attach_field_embedder(self, field: str, embedder: Any) -> None:
        """Use ``embedder`` (an instance of the model the field was added with) for the field ``field``."""
        if field not in self._field_embedding:
            raise InvalidInputError(f"field {field!r} has no embedder")
        self._field_embedding[field].attach(embedder)

    # ---- the configuration ---------------------------------------------------------------------------------------
    def _write_config(self, change: dict[str, Any]) -> None:
        """Apply ``change`` to config.json, atomically (a new file renamed over the old one, both fsynced)."""
        path = self.path / "config.json"
        try:
            write_json(path, {**json.loads(path.read_text()), **change})
        except OSError as exc:
            raise storage_error(exc, "write the configuration of", self.path) from None

    # ---- add, switch, drop ---------------------------------------------------------------------------------------
    def add_field(self, name: str, spec: dict[str, Any] | None = None, *, embedder: Any = None) -> dict[str, Any]:
        """Add the named vector field ``name`` (``spec`` as in ``create_collection(fields=...)``). With
        ``embedder`` (a name, or an :class:`~simdex.embed.Embedder`) it is a dense field of that model's dimension
        (unless ``spec`` says otherwise), filled in the background from the stored documents and kept filled by
        later upserts. Returns the field's stats."""
        self._check_writable()
        spec = dict(spec or {})
        model = None
        if embedder is not None:
            model = self._load_embedder(embedder)
            spec = embedder_spec(name, spec, model)
        if isinstance(name, str) and name in self.fields:
            raise InvalidInputError(f"collection {self.name!r} already has a field {name!r}")
        checked = check_fields({name: spec})[name]
        if model is not None:
            checked["embedder"] = embedder_info(model)
        with self._writer:
            self._write_config({"fields": {**self.fields, name: checked}})
            side = new_field_side(name, checked, self._merge_rows, str(self.path))
            with self._rw.write():
                self.fields = {**self.fields, name: checked}
                self._field_sides[name] = side
                self._sides.append(side)
            if model is not None:
                slot = EmbedderSlot(f"{self.name}.{name}", checked["embedder"])
                slot.attach(model)
                self._field_embedding[name] = slot
        if model is not None:
            self._start_fill(name)
        return self.stats()["fields"][name]

    def use_field(self, name: str, *, force: bool = False) -> None:
        """Make text queries (``search(text=...)`` in modes dense and hybrid) embed with the field ``name``'s
        embedder and search that field ("vector": the main vector, with the collection's embedder). A field
        still being filled is refused unless ``force``."""
        self._check_writable()
        if name == MAIN_FIELD:
            if self.embedder_info is None:
                raise InvalidInputError(f"collection {self.name!r} has no embedder for its main vector")
        elif name not in self._field_embedding:
            raise InvalidInputError(f"field {name!r} has no embedder: text queries need one (fields with one: "
                                    f"{sorted(self._field_embedding) or 'none'})")
        else:
            done, total = self._meta.fill_progress(name)
            if done < total and not force:
                raise InvalidInputError(f"field {name!r} is filled for {done} of {total} documents; wait for it "
                                        f"(wait_for_field) or pass force=True")
        with self._writer:
            self._write_config({"text_field": name})
            self.text_field = name

    def drop_field(self, name: str) -> None:
        """Remove the named field ``name``, its index and its values (not the main vector, nor the field text
        queries use: switch them first with :meth:`use_field`)."""
        self._check_writable()
        if name not in self.fields:
            raise InvalidInputError(f"no field {name!r} to drop (named fields: {sorted(self.fields) or 'none'}; "
                                    f"the main vector cannot be dropped)")
        if name == self.text_field:
            raise InvalidInputError(f"text queries use field {name!r}: switch them first with use_field")
        self._stop_fill(name)
        with self._writer:
            rest = {k: v for k, v in self.fields.items() if k != name}
            self._write_config({"fields": rest})
            with self._rw.write():
                side = self._field_sides.pop(name)
                self._sides.remove(side)
                self.fields = rest
                self._field_embedding.pop(name, None)
            try:
                self._meta.drop_field(name)
            except Exception as exc:  # the field is gone from the configuration: its rows are never read again
                log.warning("%s: removing the values of dropped field %s failed: %s", self.path, name, exc)

    # ---- the background fill -------------------------------------------------------------------------------------
    def _start_fill(self, name: str) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._fill, args=(name, stop), daemon=True,
                                  name=f"simdex-fill-{self.name}-{name}")
        self._fills[name] = (thread, stop)
        thread.start()

    def _stop_fill(self, name: str) -> None:
        thread, stop = self._fills.pop(name, (None, None))
        if thread is not None:
            stop.set()
            thread.join()

    def _stop_fills(self) -> None:
        for name in list(getattr(self, "_fills", {})):
            self._stop_fill(name)

    def wait_for_field(self, name: str, timeout: float | None = None) -> bool:
        """Wait until the background fill of field ``name`` has finished (True), or ``timeout`` seconds (False)."""
        thread = self._fills.get(name, (None, None))[0]
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _fill(self, name: str, stop: threading.Event) -> None:
        """Embed the documents that have no value in ``name`` yet, a batch at a time, and log the values. Storage
        errors are retried (with a growing pause); the fill ends when every document has a value."""
        after, delay = -1, 1.0
        while not stop.is_set() and not self._closed:
            try:
                rids, docs = self._meta.documents_without(name, after, FILL_BATCH)
                if not rids.size:
                    self._fill_errors.pop(name, None)
                    return
                vectors = self._field_embedding[name].model(docs, progress=False)  # no lock held
                if stop.is_set():  # closing, or the field was dropped: a restart resumes from the log
                    return
                self._log_field_values(name, rids, vectors)
                after = int(rids[-1])
                delay = 1.0
            except Exception as exc:  # keep serving: said in stats, retried
                if self._closed or stop.is_set():
                    return
                self._fill_errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("%s: filling field %s failed (retried): %s", self.path, name, exc)
                if not isinstance(exc, StorageError):
                    after = -1
                stop.wait(delay)
                delay = min(30.0, 2 * delay)

    def _log_field_values(self, name: str, rids: np.ndarray, vectors: np.ndarray) -> None:
        """Log and apply the values of field ``name`` for those of ``rids`` that are still current and still
        without one (a record replaced or deleted meanwhile is skipped; its new version was embedded on write)."""
        self._make_room_in_log()
        with self._writer:
            live = self._meta.still_without(name, rids)
            if not live.size:
                return
            values = check_field_values(self.fields, {name: vectors[np.searchsorted(rids, live)]}, live.shape[0])
            self._log_and_apply(rec.encode_field_values(live, values), rec.LogOp(rec.FIELD_VALUES, [], live,
                                                                                 fields=values))

    def _fill_state(self, name: str) -> dict[str, Any] | None:
        if name not in self._field_embedding:
            return None
        done, total = self._meta.fill_progress(name)
        thread = self._fills.get(name, (None, None))[0]
        state = "filling" if thread is not None and thread.is_alive() else "complete" if done >= total else "stopped"
        return {"state": state, "done": done, "total": total, "error": self._fill_errors.get(name)}

    # ---- embedding on write --------------------------------------------------------------------------------------
    def _embed_fields(self, n: int, documents: Any, fields: dict[str, Any] | None) -> dict[str, Any] | None:
        """``fields`` with the values of every field that has an embedder filled in from ``documents`` where a
        record has a document and no value given."""
        if not self._field_embedding or not isinstance(documents, (list, tuple)) or len(documents) != n:
            return fields
        out = dict(fields or {})
        for name, slot in self._field_embedding.items():
            given = out.get(name)
            if given is not None and (not isinstance(given, (list, tuple)) or len(given) != n):
                continue  # an array of values, or a bad entry the checks will name
            rows = [j for j in range(n) if (given is None or given[j] is None) and isinstance(documents[j], str)]
            if not rows:
                continue
            embedded = slot.model([documents[j] for j in rows], progress=False)
            values = list(given) if given is not None else [None] * n
            for j, row in zip(rows, embedded):
                values[j] = row
            out[name] = values
        return out
