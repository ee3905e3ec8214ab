"""The ``simdex`` command line: ``serve``, ``import``, ``export``, ``info``, ``search``, ``dedup``, ``warmup``,
``bench``, ``demo``. Every failure ends in one ``simdex: error: ...`` line and a non-zero exit code (set
SIMDEX_TRACEBACK=1 for the traceback)."""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._files import data_format, data_suffix, open_binary, open_text
from .errors import SimdexError

IMPORT_FORMATS = ("npy", "parquet", "jsonl")


def _fail(message: str) -> SystemExit:
    return SystemExit(f"simdex: error: {message}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


# ---- serve -------------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .server.app import create_app
    except ImportError as exc:
        raise _fail(f"the server needs its extra: pip install 'simdex[server]' ({exc})") from None
    from .store import connect
    api_key = args.api_key or os.environ.get("SIMDEX_API_KEY")
    if not _is_loopback(args.host) and not api_key and not args.keys:
        raise _fail(f"binding to {args.host} exposes the database to the network: give --api-key (or set "
                    f"SIMDEX_API_KEY) or --keys FILE, or bind to 127.0.0.1")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise _fail("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    if args.keys:
        from .server.auth import KeyRing
        try:
            KeyRing(args.keys)  # a missing or malformed key file is refused before the database is opened
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read the key file {args.keys}: {exc}") from None
    warming = None if args.no_warmup else _warmup_for_serving()
    if args.ray is not None:
        # the same app in front of a distributed database: this process holds the shard actors' handles and the
        # HTTP workers call them (no Ray Serve: one more process layer and its own deployment model for a server
        # whose work is in the shard actors anyway)
        from .distributed import connect as connect_distributed
        db = connect_distributed(args.path, None if args.ray == "local" else args.ray, sync=args.sync)
        if args.demo:
            raise _fail("--demo makes a local collection; it does not go with --ray")
    else:
        db = connect(args.path, sync=args.sync)
    if args.demo:
        demo_collection(db)
    if args.ray is None:  # (a distributed collection's embedder lives in its shard replicas)
        _warm_embedders(db)
    if warming is not None:
        from ._warmup import describe
        took = warming.result()
        if any(took.values()):
            print(describe(took), flush=True)
    app = create_app(db, api_key=api_key, max_body_bytes=args.max_body_mb << 20, max_batch=args.max_batch,
                     keys_file=args.keys, backup_dir=args.backup_dir)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    scheme = "https" if args.ssl_certfile else "http"
    print(f"simdex {__version__}: database {Path(args.path).resolve()} "
          f"({', '.join(db.list_collections()) or 'no collections yet'})")
    print(f"web console: {scheme}://{shown}:{args.port}/    API docs: {scheme}://{shown}:{args.port}/docs", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ssl_certfile=args.ssl_certfile,
                    ssl_keyfile=args.ssl_keyfile)
    finally:
        db.close()
    return 0


def _warmup_for_serving():
    """Compile what serving needs (in worker processes) while the database opens, so that the first requests do
    not wait on the compiler; the caller waits for the returned future before listening. Nothing to do (a quick
    check) when the kernel cache is warm."""
    from concurrent.futures import ThreadPoolExecutor

    from ._warmup import is_warm, warmup
    groups = ("hnsw", "database", "embed")
    cold = [g for g in groups if not is_warm(g)]
    if cold:
        print(f"simdex: compiling kernels for the first start ({', '.join(cold)}; once per install, see "
              f"`simdex warmup`)", flush=True)
    pool = ThreadPoolExecutor(1)  # its thread only waits on the worker processes
    future = pool.submit(warmup, groups, processes=max(2, min(4, os.cpu_count() or 1)),
                         progress=False)
    pool.shutdown(wait=False)
    return future


def cmd_warmup(args: argparse.Namespace) -> int:
    from ._cache import cache_dir
    from ._warmup import GROUPS, describe, warmup
    groups = None if args.groups == "all" else [g for g in args.groups.split(",") if g]
    took = warmup(groups, processes=args.processes, force=args.force, progress=not args.no_progress)
    print(describe(took))
    print(f"kernel cache: {cache_dir()}  (groups: {', '.join(GROUPS)})")
    return 0


def demo_collection(db, name: str = "wordnet", limit: int | None = None) -> None:
    """Create the demo collection from real data: the WordNet glosses and their all-MiniLM-L6-v2 embeddings in
    ../shared/data, searchable by text (the built-in MiniLM embeds queries; BM25 over the glosses; hybrid by
    default). ``limit``: only the first records (tests)."""
    if name in db.list_collections():
        existing = db.get_collection(name)
        if existing.embedder_info is not None and existing.text:
            return
        print(f"the demo collection {name!r} predates text search: re-creating it from ../shared/data")
        db.drop_collection(name)
    from . import datasets
    from ._progress import progress_bar
    vectors = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy").astype(np.float32)
    collection = db.create_collection(name, metric="cosine", embedder="minilm", text=True)
    ids, metas, docs = datasets.wordnet_records()
    if limit is not None:
        ids, metas, docs, vectors = ids[:limit], metas[:limit], docs[:limit], vectors[:limit]
    bar = progress_bar(len(ids), f"demo collection {name!r}", True, unit="rec")
    for s in range(0, len(ids), 5000):  # the glosses come with their MiniLM vectors: nothing to embed
        collection.upsert(ids[s:s + 5000], vectors[s:s + 5000], metas[s:s + 5000], docs[s:s + 5000])
        bar.update(min(5000, len(ids) - s))
    bar.close()
    print(f"created demo collection {name!r}: {len(ids):,} WordNet glosses (all-MiniLM-L6-v2 embeddings, BM25); "
          f"metadata fields pos, words, n_words; search it by text")


def _warm_embedders(db) -> None:
    """Load the collections' embedders and compile their kernels in the background, so that the first text
    search does not wait for it."""
    import threading

    def warm() -> None:
        for name in db.list_collections():
            collection = db.get_collection(name)
            if collection.embedder_info is not None:
                try:
                    collection.embedder(["warm up"])
                except Exception:  # reported by the first real search instead
                    pass
    threading.Thread(target=warm, name="simdex-warm-embedders", daemon=True).start()


# ---- import / export ---------------------------------------------------------------------------------------------
def _read_records(path: Path, fmt: str, args: argparse.Namespace) -> Iterator[tuple[str, Any, dict, str | None]]:
    """(id, vector or None, metadata, document) of each record; the vector is None (embedded from the document)
    with ``--embed``, where records need no vector field."""
    embed = args.embed is not None
    if fmt == "npy":
        if embed:
            raise _fail("--embed needs records with text: JSONL or Parquet, not .npy")
        vectors = _load_npy(path)
        ids = _npy_ids(path, vectors.shape[0], args.id_prefix)
        for i in range(vectors.shape[0]):
            yield ids[i], vectors[i], {}, None
    elif fmt == "jsonl":
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    if not isinstance(r, dict):
                        raise ValueError("not a JSON object")
                    id_ = r[args.id_field]
                    vector = r.get(args.vector_field) if embed else r[args.vector_field]
                    if embed and not isinstance(r.get(args.document_field), str):
                        raise KeyError(args.document_field)
                except (ValueError, KeyError) as exc:
                    needed = args.document_field if embed else args.vector_field
                    raise _fail(f"{path}:{lineno}: bad record ({exc!r}); each line must be a JSON object with "
                                f"{args.id_field!r} and {needed!r}{' (a string)' if embed else ''}") from None
                meta = r.get("metadata")
                if meta is None:
                    meta = {k: v for k, v in r.items() if k not in (args.id_field, args.vector_field,
                                                                    args.document_field)}
                yield str(id_), vector, meta, r.get(args.document_field)
    else:
        from .errors import InvalidInputError
        from .store.importing import parquet_batches
        try:
            for batch in parquet_batches(path, id_column=args.id_field, vector_column=args.vector_field,
                                         document_column=args.document_field):
                if batch.vectors is None and not embed:
                    raise _fail(f"{path}: no column {args.vector_field!r}")
                if embed and batch.documents is None:
                    raise _fail(f"{path}: no column {args.document_field!r}")
                for j, record_id in enumerate(batch.ids):
                    yield (record_id, None if batch.vectors is None else batch.vectors[j], batch.metadatas[j],
                           None if batch.documents is None else batch.documents[j])
        except InvalidInputError as exc:
            raise _fail(str(exc)) from None


def _load_npy(path: Path) -> np.ndarray:
    with open_binary(path) as f:
        compressed = not isinstance(f, io.BufferedReader)
        vectors = np.load(io.BytesIO(f.read()), allow_pickle=False) if compressed else None
    if vectors is None:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    if vectors.ndim != 2:
        raise _fail(f"{path}: expected a 2-D array of vectors, got shape {vectors.shape}")
    return vectors


def _ids_file(npy: Path) -> Path:
    """The ids that `simdex export` writes beside a .npy of vectors (one per line, in row order)."""
    name = npy.name
    for suffix in (".gz", ".bz2", ".xz", ".npy"):
        name = name.removesuffix(suffix)
    return npy.with_name(name + ".ids.txt")


def _npy_ids(path: Path, n: int, prefix: str) -> list[str]:
    ids_path = _ids_file(path)
    if not ids_path.exists():
        return [f"{prefix}{i}" for i in range(n)]
    ids = ids_path.read_text(encoding="utf-8").splitlines()
    if len(ids) != n:
        raise _fail(f"{ids_path} has {len(ids)} ids for the {n} vectors of {path}")
    return ids


def _count_records(path: Path, fmt: str) -> int | None:
    if fmt == "npy":
        return int(_load_npy(path).shape[0])
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
            return pq.ParquetFile(open_binary(path)).metadata.num_rows
        except ImportError:
            return None
    return None


def _format_of(path: Path, given: str | None) -> str:
    fmt = given or data_format(path)
    if fmt not in IMPORT_FORMATS:
        raise _fail(f"cannot tell the format of {path}; give --format ({', '.join(IMPORT_FORMATS)})")
    return fmt


def cmd_import(args: argparse.Namespace) -> int:
    from ._progress import progress_bar
    from .store import connect
    path = Path(args.file)
    if not path.exists():
        raise _fail(f"no such file: {path}")
    fmt = _format_of(path, args.format)
    total = _count_records(path, fmt)
    with connect(args.path) as db:
        collection = None if args.collection not in db.list_collections() else db.get_collection(args.collection)
        bar = progress_bar(total or 0, f"import {path.name}", True, unit="rec")
        done = 0
        batch: list[tuple] = []

        def flush() -> None:
            nonlocal collection, done
            if not batch:
                return
            if args.embed is not None:  # rows without a vector are embedded from their document
                vectors = [b[1] for b in batch]
                if collection is None:
                    collection = db.create_collection(args.collection, None, args.metric, args.index,
                                                      embedder=args.embed, text=args.text)
            else:
                vectors = np.asarray([b[1] for b in batch], dtype=np.float64)
                if collection is None:
                    collection = db.create_collection(args.collection, vectors.shape[1], args.metric, args.index,
                                                      text=args.text)
            collection.upsert([b[0] for b in batch], vectors, [b[2] for b in batch], [b[3] for b in batch])
            done += len(batch)
            bar.update(len(batch))
            batch.clear()

        try:
            for record in _read_records(path, fmt, args):
                batch.append(record)
                if len(batch) >= args.batch_size:
                    flush()
            flush()
        except UnicodeDecodeError as exc:
            raise _fail(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}; compressed files are read "
                        f"when they are gzip, bzip2 or xz); import stopped after {done} records (those are "
                        f"stored)") from None
        except (SimdexError, ValueError, OSError) as exc:
            raise _fail(f"import stopped after {done} records (those are stored): {exc}") from None
        finally:
            bar.close()
        db.optimize()
        print(f"imported {done:,} records into {args.collection!r} ({collection.count():,} in total)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ._progress import progress_bar
    from .store import connect
    out = Path(args.out)
    fmt = _format_of(out, args.format)
    if data_suffix(out) != out.suffix.lower():
        raise _fail(f"{out}: export writes uncompressed files (compress them afterwards; import reads them)")
    with connect(args.path, read_only=True) as db:  # export only reads: a view, beside a running server too
        collection = db.get_collection(args.collection)
        total = collection.count()
        bar = progress_bar(total, f"export {args.collection}", True, unit="rec")
        page, offset, vectors, rows = 4096, 0, [], []
        sink = open(out, "w", encoding="utf-8") if fmt == "jsonl" else None
        try:
            while True:
                records = collection.get(limit=page, offset=offset, include=["metadatas", "documents", "embeddings"])
                if not records:
                    break
                for r in records:
                    if sink is not None:
                        sink.write(json.dumps({"id": r["id"], "vector": r["embedding"], "metadata": r["metadata"],
                                               "document": r["document"]}) + "\n")
                    else:
                        vectors.append(r["embedding"])
                        rows.append(r)
                offset += len(records)
                bar.update(len(records))
        finally:
            bar.close()
            if sink is not None:
                sink.close()
        if fmt == "npy":  # the vectors, and their ids beside them; metadata and documents do not fit
            np.save(out, np.asarray(vectors, np.float32).reshape(-1, collection.dim))
            _ids_file(out).write_text("".join(r["id"] + "\n" for r in rows), encoding="utf-8")
            if any(r["metadata"] or r["document"] is not None for r in rows):
                print(f"note: {out} holds the vectors and {_ids_file(out).name} the ids; metadata and documents "
                      f"are only in .jsonl and .parquet exports", file=sys.stderr)
        elif fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise _fail("writing Parquet needs pyarrow: pip install pyarrow") from None
            table = pa.table({"id": [r["id"] for r in rows], "vector": vectors,
                              "metadata": [json.dumps(r["metadata"]) for r in rows],
                              "document": [r["document"] for r in rows]})
            pq.write_table(table, out)
        print(f"exported {offset:,} records of {args.collection!r} to {out}")
    return 0


# ---- keys --------------------------------------------------------------------------------------------------------
def cmd_keys(args: argparse.Namespace) -> int:
    from .server.auth import add_key, list_keys, remove_key
    if args.action != "list" and not args.name:
        from .errors import InvalidInputError
        raise InvalidInputError(f"simdex keys {args.action} needs --name")
    if args.action == "add":
        collections = [c for c in args.collections.split(",") if c] if args.collections else None
        key = add_key(args.file, args.name, args.role, collections)
        print(f"key {args.name!r} ({args.role}{', collections ' + ','.join(collections) if collections else ''}) "
              f"written to {args.file}; a running server takes it within a second. The key (shown only now):")
        print(key)
    elif args.action == "remove":
        remove_key(args.file, args.name)
        print(f"key {args.name!r} removed from {args.file}; a running server refuses it within a second")
    else:
        for entry in list_keys(args.file):
            print(json.dumps(entry))
    return 0


# ---- backup / restore --------------------------------------------------------------------------------------------
def _backup_summary(body: dict) -> str:
    per = ", ".join(f"{name} at log record {c['lsn']}" for name, c in body["collections"].items()) or "no collections"
    return (f"{len(body['files'])} files: {body['bytes_copied'] / 2**20:.1f} MiB copied, "
            f"{body['bytes_linked'] / 2**20:.1f} MiB hard-linked; {per}")


def cmd_backup(args: argparse.Namespace) -> int:
    from .errors import InvalidInputError
    if (args.url is None) == (args.path is None):
        raise InvalidInputError("give the database as --path DIR (opened here) or --url URL (a server holding it)")
    if args.url:  # a server has the database open: it takes the backup (on its machine)
        from .server.client import Client
        body = Client(args.url, api_key=args.api_key).backup(args.dest, args.since)
    else:
        from .store import connect
        with connect(args.path) as db:
            body = db.backup(args.dest, args.since)
    print(f"backed up into {args.dest}: {_backup_summary(body)}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .store.backup import restore, verify
    if args.verify_only:
        body = verify(args.source)
        print(f"{args.source}: all {len(body['files'])} files match their checksums")
        return 0
    if args.dest is None:
        from .errors import InvalidInputError
        raise InvalidInputError("give the new database folder to restore into (or --verify-only)")
    body = restore(args.source, args.dest)
    print(f"restored {args.source} into {args.dest} (every checksum checked first): {_backup_summary(body)}")
    return 0


# ---- info / search -----------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        from .store import connect
        with connect(path, read_only=True) as db:
            print(json.dumps(db.stats(), indent=1))
        return 0
    from .fileformat import load_arrays
    kind, meta, arrays = load_arrays(path, mmap=True)
    print(json.dumps({"kind": kind, "meta": meta,
                      "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()}},
                     indent=1))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .store import connect
    where = json.loads(args.where) if args.where else None
    with connect(args.path, read_only=True) as db:
        collection = db.get_collection(args.collection)
        if args.id is not None:
            found = collection.get([args.id], include=["embeddings"])
            if not found:
                raise _fail(f"no record with id {args.id!r} in {args.collection!r}")
            vector = found[0]["embedding"]
        elif args.vector is not None:
            vector = json.loads(args.vector)
        elif args.text is None:
            raise _fail("give --text, --id or --vector")
        else:
            vector = None
        hits = collection.search(vector, args.k, where=where, text=args.text, mode=args.mode)
        for rank, hit in enumerate(hits, 1):
            doc = (hit.get("document") or "")[:100]
            value = hit["distance"] if "distance" in hit else hit["score"]
            print(f"{rank:3d}. {value:.4f}  {hit['id']}  {json.dumps(hit.get('metadata'))[:80]}  {doc}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main
    demo_main(args.dataset, args.ef, args.threads, args.limit)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simdex", description="simdex similarity search")
    parser.add_argument("--version", action="version", version=f"simdex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP server and web console over a database folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--path", required=True, help="database folder (created if missing)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="one admin key (this or --keys is required when --host is not "
                                                   "a loopback address)")
    p.add_argument("--keys", default=None, help="a key file (simdex keys add FILE ...): keys with roles read / "
                                                "write / admin, optionally limited to some collections; re-read "
                                                "when it changes")
    p.add_argument("--backup-dir", default=None, help="where POST /api/v1/admin/backup (simdex backup --url) writes "
                                                      "backups, by name")
    p.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM; uvicorn's option)")
    p.add_argument("--ssl-keyfile", default=None, help="... and this private key")
    p.add_argument("--sync", default="always", choices=["always", "batch", "off"])
    p.add_argument("--max-body-mb", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=10_000)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--demo", action="store_true", help="create the WordNet demo collection if it is missing")
    p.add_argument("--no-warmup", action="store_true", help="do not compile the kernels before serving")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="serve a distributed database (simdex.distributed, extra simdex[ray]) on the Ray cluster at "
                        "ADDRESS (\"auto\": the one this machine belongs to; no ADDRESS: a Ray on this machine)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("import", help="import records from .npy, Parquet or JSONL into a collection",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Each JSONL line / Parquet row gives the record's id (--id-field), vector "
                                   "(--vector-field; or --embed to embed the document), document "
                                   "(--document-field) and metadata: the 'metadata' field (a JSON object, or JSON "
                                   "text in Parquet) when there is one, else every other field. A .npy file holds "
                                   "vectors; ids come from NAME.ids.txt beside it (what export writes) or "
                                   "--id-prefix + row. Files may be gzip, bzip2 or xz compressed (.jsonl.gz).")
    p.add_argument("--path", required=True, help="database folder")
    p.add_argument("collection")
    p.add_argument("file")
    p.add_argument("--format", choices=IMPORT_FORMATS)
    p.add_argument("--metric", default="cosine", help="for a new collection")
    p.add_argument("--index", default="hnsw", help="for a new collection: hnsw, hnsw-lvq8, hnsw-int8, ivf-pq, "
                                                   "ivf-rabitq, vamana, vamana-disk, spann or flat")
    p.add_argument("--id-field", default="id")
    p.add_argument("--vector-field", default="vector")
    p.add_argument("--document-field", default="document")
    p.add_argument("--id-prefix", default="", help=".npy rows get ids PREFIX + row number")
    p.add_argument("--embed", nargs="?", const="minilm", default=None, metavar="MODEL",
                   help="embed the document field (--document-field) of records without a vector; a new collection "
                        "gets this embedder (default minilm, built in)")
    p.add_argument("--text", action="store_true", help="a new collection also indexes the documents for BM25")
    p.add_argument("--batch-size", type=int, default=2000)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export a collection to .npy (+ .ids.txt), Parquet or JSONL",
                       description="The inverse of import for every format: JSONL and Parquet keep ids, vectors, "
                                   "metadata and documents; .npy keeps vectors, with the ids in NAME.ids.txt.")
    p.add_argument("--path", required=True)
    p.add_argument("collection")
    p.add_argument("out")
    p.add_argument("--format", choices=IMPORT_FORMATS)
    p.add_argument("--read-only", action="store_true",
                   help="kept for old scripts: export always reads a consistent read-only view, which works while "
                        "a server writes")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("keys", help="API keys with roles for simdex serve --keys FILE (stored hashed)")
    p.add_argument("action", choices=["add", "remove", "list"], help="add also rotates: a new key under the name")
    p.add_argument("file")
    p.add_argument("--name")
    p.add_argument("--role", choices=["read", "write", "admin"], default="read")
    p.add_argument("--collections", default=None, help="comma-separated: the only collections the key may touch")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("backup", help="a consistent copy of a database while it serves (full, or incremental with "
                                      "--since); restore it with simdex restore")
    p.add_argument("dest", help="a new folder (with --url: a name in the server's --backup-dir)")
    p.add_argument("--path", help="the database folder (opened here; a database a server holds: use --url)")
    p.add_argument("--url", help="the server holding the database: it writes the backup on its machine")
    p.add_argument("--api-key", default=None)
    p.add_argument("--since", default=None, help="a previous backup (with --url: its name): files it holds "
                                                 "unchanged are hard-linked")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="check every checksum of a backup, then restore it into a new folder")
    p.add_argument("source", help="the backup folder")
    p.add_argument("dest", nargs="?", help="a new database folder")
    p.add_argument("--verify-only", action="store_true", help="only check the backup's checksums")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("info", help="describe a database folder or a saved index file")
    p.add_argument("path")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("search", help="search a collection by text, record id or vector")
    p.add_argument("--path", required=True)
    p.add_argument("collection")
    p.add_argument("--text", help="a text query (collections with an embedder or a text index)")
    p.add_argument("--mode", choices=["dense", "bm25", "hybrid"], help="for --text (default: what the collection "
                                                                        "supports, hybrid when both)")
    p.add_argument("--id")
    p.add_argument("--vector", help="JSON array")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--where", help="JSON filter")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("demo", help="index a real data set, run its queries, print recall and latency")
    p.add_argument("--dataset", default="wordnet-minilm-384")
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=None,
                   help="index only the first LIMIT base vectors (and at most LIMIT queries): a quick look")
    p.set_defaults(func=cmd_demo)

    from .bench.__main__ import build_parser as bench_parser
    p = sub.add_parser("warmup", help="compile simdex's kernels now (in a few processes) instead of on first use",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--groups", default="all", help="comma-separated: hnsw, database, embed, quant, sets, sparse")
    p.add_argument("--processes", type=int, default=None, help="at once (default: CPU count, at most 4)")
    p.add_argument("--force", action="store_true", help="also groups already warm")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_warmup)

    bench_parser(sub.add_parser("bench", help="benchmarks against peer libraries (see python -m simdex.bench)"))
    from .sets.cli import register as register_sets, run as run_sets
    register_sets(sub).set_defaults(func=run_sets)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench.__main__ import main as bench_main
        return bench_main(argv[argv.index("bench") + 1:])
    try:
        return args.func(args)
    except (SimdexError, OSError, ValueError, KeyError, ImportError) as exc:
        if os.environ.get("SIMDEX_TRACEBACK"):
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise _fail(message if isinstance(exc, SimdexError) else f"{type(exc).__name__}: {message}") from None


if __name__ == "__main__":
    sys.exit(main())
