"""``simdex dedup``: near-duplicate detection of text files from the command line."""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

from .dedup import DEFAULT_BATCH, deduplicate, read_documents
from .lsh import DEFAULT_NUM_PERM, DEFAULT_THRESHOLD, DEFAULT_WEIGHTS


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``dedup`` subcommand to a ``simdex`` argument parser's subparsers."""
    p = subparsers.add_parser(
        "dedup", help="find near-duplicate documents (MinHash LSH or LSHBloom) in JSONL/Parquet/text files",
        description="Streams the inputs, shingles each document, sketches it with MinHash and finds near "
                    "duplicates by banded LSH (verified by exact Jaccard) or, with --bloom, by LSHBloom in fixed "
                    "memory. Writes keep.txt (ids to keep, input order), clusters.jsonl (LSH mode) or "
                    "duplicates.txt (Bloom mode) and summary.json into --out. With --path and --collection it reads "
                    "the documents (or a string metadata field, --text-field) of a database collection instead, "
                    "through a read-only view (a server may keep writing).")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help=".jsonl/.json/.ndjson (optionally .gz), .parquet (needs pyarrow) or text (one document a line)")
    p.add_argument("--path", default=None, help="a simdex database folder (with --collection)")
    p.add_argument("--collection", default=None, help="deduplicate this collection of --path: its documents, or "
                                                      "the metadata field named by --text-field")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"Jaccard similarity of duplicates (default {DEFAULT_THRESHOLD})")
    p.add_argument("--ngram", type=int, default=5, help="shingle length in words (or characters) (default 5)")
    p.add_argument("--unit", choices=("word", "char"), default="word", help="shingle unit (default word)")
    p.add_argument("--num-perm", type=int, default=DEFAULT_NUM_PERM,
                   help=f"MinHash values per document (default {DEFAULT_NUM_PERM})")
    p.add_argument("--weights", type=float, nargs=2, default=DEFAULT_WEIGHTS, metavar=("FP", "FN"),
                   help="false positive / false negative weights for choosing bands and rows "
                        f"(default {DEFAULT_WEIGHTS[0]} {DEFAULT_WEIGHTS[1]}, as in MinHashLSH and LSHBloom)")
    p.add_argument("--bloom", action="store_true", help="LSHBloom: fixed memory, no exact verification")
    p.add_argument("--fp-rate", type=float, default=1e-4, help="LSHBloom overall false positive rate (default 1e-4)")
    p.add_argument("--capacity", type=int, default=None, help="LSHBloom: documents to size the filters for "
                   "(default: counted from the inputs)")
    p.add_argument("--text-field", default=None, help="JSON/Parquet field holding the text (default text); for a "
                                                      "collection, a string metadata field (default: the documents)")
    p.add_argument("--id-field", default="id", help="JSON/Parquet field holding the id (default id; else path:line)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="documents per batch (default 20000)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--out", default="dedup-out", help="output folder (default dedup-out)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _count_documents(paths: list[str]) -> int | None:
    """Documents in the inputs by a fast pass (newlines; Parquet metadata), for the progress bar and the Bloom
    filter size. None when an input is missing (the reader reports it)."""
    total = 0
    for path in map(Path, paths):
        if not path.exists():
            return None
        if path.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                return None
            total += pq.ParquetFile(path).metadata.num_rows
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
    return total


def run(args: argparse.Namespace) -> int:
    """Run ``simdex dedup`` with parsed arguments; returns the exit status."""
    if (args.path is None) != (args.collection is None):
        print("simdex dedup: error: --path and --collection go together", file=sys.stderr)
        return 2
    if bool(args.inputs) == (args.collection is not None):
        print("simdex dedup: error: give input files, or --path and --collection (not both)", file=sys.stderr)
        return 2
    database = None
    if args.collection is not None:
        from ..store import connect
        from ..store.dedup import collection_texts
        try:
            database = connect(args.path, read_only=True)
            collection = database.get_collection(args.collection)
            total = collection.count()
        except Exception as exc:  # a missing folder or collection, a damaged database: said plainly
            print(f"simdex dedup: error: {exc}", file=sys.stderr)
            if database is not None:
                database.close()
            return 2
        batches = collection_texts(collection, args.text_field, args.batch_size)
    else:
        need_count = (args.bloom and args.capacity is None) or (not args.no_progress and sys.stderr.isatty())
        total = _count_documents(args.inputs) if need_count else None
        batches = read_documents(args.inputs, text_field=args.text_field or "text", id_field=args.id_field,
                                 batch_size=args.batch_size)
    try:
        result = deduplicate(batches, threshold=args.threshold, ngram=args.ngram, unit=args.unit,
                             num_perm=args.num_perm, bloom=args.bloom, fp_rate=args.fp_rate,
                             capacity=args.capacity, weights=tuple(args.weights), seed=args.seed,
                             threads=args.threads, progress=False if args.no_progress else None, total=total)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"simdex dedup: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if database is not None:
            database.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = result.ids
    with open(out / "keep.txt", "w", encoding="utf-8") as f:
        for i in result.keep.nonzero()[0]:
            f.write(ids[i] + "\n")
    if args.bloom:
        with open(out / "duplicates.txt", "w", encoding="utf-8") as f:
            for i in (~result.keep).nonzero()[0]:
                f.write(ids[i] + "\n")
    else:
        with open(out / "clusters.jsonl", "w", encoding="utf-8") as f:
            for c, members in enumerate(result.clusters()):
                f.write(json.dumps({"cluster": c, "keep": ids[members[0]],
                                    "duplicates": [ids[m] for m in members[1:]]}) + "\n")
    summary = {"inputs": args.inputs or [f"{args.path}:{args.collection}"], "documents": result.n_documents,
               "duplicates": result.n_duplicates,
               "kept": int(result.keep.sum()), **result.stats}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    mode = "LSHBloom" if args.bloom else f"MinHash LSH ({result.stats['bands']} bands x {result.stats['rows']} rows)"
    print(f"{result.n_documents} documents, {result.n_duplicates} near duplicates removed "
          f"(Jaccard >= {args.threshold} on {args.ngram}-{args.unit} shingles, {mode}), "
          f"{int(result.keep.sum())} kept, {result.n_empty} empty; "
          f"index {result.stats['index_bytes'] / 2**20:.1f} MiB; "
          f"{result.stats['total_s']:.1f} s. Wrote {out}/keep.txt"
          + ("" if args.bloom else f", {out}/clusters.jsonl ({len(result.clusters())} clusters)")
          + f", {out}/summary.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simdex")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
