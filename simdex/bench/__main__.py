"""``python -m simdex.bench``: side-by-side benchmarks of simdex and its peers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import datasets


def _filtered_bench_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the window and label benches."""
    parser.add_argument("--n-base", type=int, default=None, help="use only the first N base vectors")
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed queries per slow method and point")
    parser.add_argument("--threads", type=int, default=None, help="build threads (search is timed on 1 thread)")
    parser.add_argument("--out", default="bench-results", help="folder for the JSON and PNG files")


def _record(bench: Any, report: dict[str, Any], out: str, argv: list[str] | None, table: bool = True) -> None:
    """Stamp ``report`` with the command that produced it, print its table (unless the run already logged it)
    and save its JSON and plot under ``out`` with the bench module's ``save``."""
    report["command"] = "python -m simdex.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if table:
        print(bench.format_report(report))
    saved = bench.save(report, Path(out))
    print("wrote " + " and ".join(str(p) for p in (saved if isinstance(saved, tuple) else (saved,)) if p))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m simdex.bench",
                                               description="Benchmarks of simdex against its peers.")
    sub = parser.add_subparsers(dest="bench")
    ann = sub.add_parser("ann", help="HNSW recall/QPS/build/memory vs FAISS, hnswlib, USearch")
    ann.add_argument("--dataset", action="append", choices=sorted(datasets.DATASETS),
                     help="data set (repeatable; default: all three)")
    ann.add_argument("--libs", default="simdex,faiss,hnswlib,usearch", help="comma-separated libraries")
    ann.add_argument("--M", type=int, default=16)
    ann.add_argument("--ef-construction", type=int, default=200)
    ann.add_argument("--ef", default=None, help="comma-separated ef values to sweep")
    ann.add_argument("--k", type=int, default=10)
    ann.add_argument("--threads", type=int, default=None, help="threads for build and batch search (default: all)")
    ann.add_argument("--n-base", type=int, default=None, help="use only the first N base vectors")
    ann.add_argument("--n-queries", type=int, default=None, help="use only the first N queries")
    ann.add_argument("--repeats", type=int, default=3, help="timed runs per point; the best counts")
    ann.add_argument("--out", default="bench-results", help="folder for the JSON and PNG files")
    front = sub.add_parser("frontier", help="graph over RaBitQ edge codes vs SymphonyQG, SVS, ScaNN, FAISS, hnswlib "
                                            "and simdex's HNSW (float32, LVQ-8): QPS at recall 0.95 / 0.99")
    front.add_argument("--dataset", action="append", choices=sorted(datasets.DATASETS),
                       help="data set (repeatable; default: all three)")
    front.add_argument("--libs", default="simdex-qg,simdex-lvq8,simdex,symqg,faiss,hnswlib,svs,scann",
                       help="comma-separated libraries")
    front.add_argument("--M", type=int, default=16, help="HNSW M; single-layer graphs get degree 2M")
    front.add_argument("--ef-construction", type=int, default=200)
    front.add_argument("--ef", default=None, help="comma-separated search efforts to sweep")
    front.add_argument("--threads", type=int, default=None, help="threads for build and batch search (default: all)")
    front.add_argument("--n-base", type=int, default=None, help="use only the first N base vectors")
    front.add_argument("--n-queries", type=int, default=None, help="use only the first N queries")
    front.add_argument("--repeats", type=int, default=3, help="timed runs per point; the best counts")
    front.add_argument("--out", default="bench-results")
    quant = sub.add_parser("quant", help="HNSW over LVQ/int8 codes vs hnswlib and FAISS HNSWSQ; IVF-PQ vs FAISS")
    quant.add_argument("--dataset", action="append", choices=sorted(datasets.DATASETS),
                       help="data set (repeatable; default: wordnet-minilm-384 and fashion-mnist-784)")
    quant.add_argument("--parts", default="graph,ivf,binary", help="comma-separated: graph,ivf,rabitq,binary")
    quant.add_argument("--codecs", default="lvq8,int8,lvq4x8", help="codecs of the HNSW-over-codes part")
    quant.add_argument("--peers", default="hnswlib,faiss")
    quant.add_argument("--M", type=int, default=16)
    quant.add_argument("--ef-construction", type=int, default=200)
    quant.add_argument("--nlist", type=int, default=1024)
    quant.add_argument("--m", type=int, default=None, help="PQ sub-quantizers (default dim // 8)")
    quant.add_argument("--k", type=int, default=10)
    quant.add_argument("--threads", type=int, default=None, help="build threads (search is timed on 1 thread)")
    quant.add_argument("--n-base", type=int, default=None)
    quant.add_argument("--n-queries", type=int, default=2000)
    quant.add_argument("--repeats", type=int, default=2)
    quant.add_argument("--out", default="bench-results")
    disk = sub.add_parser("disk", help="SPANN disk index: build + search a set several times the memory limit")
    disk.add_argument("--n", type=int, default=1_600_000, help="rows of the 384-d set (real rows + noisy copies)")
    disk.add_argument("--limit-mb", type=int, default=600, help="RLIMIT_DATA of the child that builds and searches")
    disk.add_argument("--n-queries", type=int, default=1000)
    disk.add_argument("--sigma", type=float, default=0.25, help="noise of the copies (relative to unit norm)")
    disk.add_argument("--list-size", type=int, default=96, help="target vectors per list before closure")
    disk.add_argument("--closure-eps", type=float, default=0.05)
    disk.add_argument("--max-replicas", type=int, default=4)
    disk.add_argument("--sample", type=int, default=100_000, help="vectors the clustering is trained on")
    disk.add_argument("--work-dir", default="/tmp/simdex-disk", help="where the set and the index are written")
    disk.add_argument("--out", default="bench-results")
    disk.add_argument("--through", choices=("index", "database"), default="index",
                      help="database: upsert the set into a collection and search it through the database API")
    disk.add_argument("--index", default="ivf-pq", choices=("ivf-pq", "ivf-rabitq", "hnsw-lvq8", "hnsw-int8"),
                      help="the collection's index kind (--through database)")
    disk.add_argument("--batch", type=int, default=10_000, help="rows per upsert (--through database)")
    disk.add_argument("--index-params", type=json.loads, default=None, metavar="JSON",
                      help='the collection\'s index_params (--through database), e.g. \'{"codec": "pq24"}\'')
    startup = sub.add_parser("startup", help="first-call times and compile share in fresh processes: cold cache, "
                                             "warm cache, and after `simdex warmup`")
    startup.add_argument("--scenarios", default="hnsw,database,text,dedup,cli-search")
    startup.add_argument("--modes", default="cold,warm,warmup")
    startup.add_argument("--profile", type=int, default=0, metavar="N",
                         help="list the N kernels that took longest to compile in each cold run")
    startup.add_argument("--out", default="bench-results")
    db = sub.add_parser("db", help="database upsert throughput and search latency vs Chroma and LanceDB")
    db.add_argument("--libs", default="simdex,simdex-http,chroma,chroma-http,lancedb",
                    help="comma-separated: simdex, simdex-http, chroma, chroma-http, lancedb, and simdex-ivf-pq, "
                         "simdex-vamana, simdex-vamana-disk, simdex-spann, simdex-hnsw-lvq8, simdex-hnsw-int8 "
                         "(collections of the other index kinds); lib-hnsw, lib-ivf-pq, ... (each kind's index "
                         "used directly from the library, for the database's cost)")
    db.add_argument("--n-base", type=int, default=None, help="first N WordNet records (default: all 107,659)")
    db.add_argument("--n-queries", type=int, default=1000)
    db.add_argument("--batch", type=int, default=1000, help="records per upsert call")
    db.add_argument("--threads", type=int, default=None)
    db.add_argument("--out", default="bench-results")
    crash = sub.add_parser("crash", help="kill a database writer with SIGKILL repeatedly and verify every recovery")
    crash.add_argument("--kills", type=int, default=200)
    crash.add_argument("--seed", type=int, default=0)
    crash.add_argument("--max-wait", type=float, default=4.0, help="longest run (s) of the writer before a kill")
    crash.add_argument("--disk-full", type=float, default=0.0,
                       help="fraction of rounds that fill the disk up while the writer runs (a tmpfs; needs root)")
    crash.add_argument("--fs-size-mb", type=int, default=160,
                       help="size of that tmpfs (MiB; one collection per index kind, most keeping files of "
                            "their own)")
    crash.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    crash.add_argument("--out", default="bench-results", help="folder for crash.json")
    filt = sub.add_parser("filtered", help="filtered HNSW search: exact scan vs graph traversal by selectivity")
    filt.add_argument("--dataset", default="wordnet-minilm-384", choices=sorted(datasets.DATASETS))
    filt.add_argument("--n-queries", type=int, default=200)
    filt.add_argument("--out", default="bench-results")
    win = sub.add_parser("window", help="window (range) filtered search: WindowIndex vs post-filtering hnswlib and "
                                        "pre-filtered brute force, by selectivity")
    win.add_argument("--dataset", action="append", choices=sorted(datasets.DATASETS),
                     help="data set (repeatable; default: fashion-mnist-784)")
    _filtered_bench_options(win)
    win.add_argument("--branching", type=int, default=2)
    win.add_argument("--leaf-size", type=int, default=1024)
    lab = sub.add_parser("labels", help="label-filtered search: LabelIndex vs filtered and post-filtered HNSW and "
                                        "pre-filtered brute force, on the data sets' real labels")
    lab.add_argument("--dataset", action="append", choices=["fashion-mnist-784", "wordnet-minilm-384"],
                     help="data set (repeatable; default: fashion-mnist-784)")
    _filtered_bench_options(lab)
    lab.add_argument("--label-graph-min", type=int, default=2000, help="points a label needs for its own graph")
    sets = sub.add_parser("sets", help="MinHash / MinHash LSH / LSHBloom vs datasketch on gcide")
    sets.add_argument("--parts", default="throughput,error,dedup",
                      help="comma-separated: throughput,error,dedup,write (dedup on write through the database)")
    sets.add_argument("--planted", type=int, default=2500, help="write: near-copies of gcide entries appended")
    sets.add_argument("--batch", type=int, default=1000, help="write: records per upsert")
    sets.add_argument("--num-perm", type=int, default=128)
    sets.add_argument("--repeats", type=int, default=3)
    sets.add_argument("--datasketch-docs", type=int, default=20_000, help="documents for datasketch throughput")
    sets.add_argument("--pairs", type=int, default=3000, help="pairs per Jaccard point for the MSE curves")
    sets.add_argument("--threshold", type=float, default=0.8)
    sets.add_argument("--ngram", type=int, default=5)
    sets.add_argument("--fp-rate", type=float, default=1e-4)
    sets.add_argument("--no-datasketch", action="store_true")
    sets.add_argument("--out", default="bench-results", help="folder for the JSON and PNG files")
    tr = sub.add_parser("target-recall", help="search(target_recall=t): the recall reached on real queries")
    tr.add_argument("--dataset", action="append", choices=sorted(datasets.DATASETS),
                    help="data set (repeatable; default: fashion-mnist-784, wordnet-minilm-384, glove-50)")
    tr.add_argument("--index", default="hnsw,vamana,ivf-pq", help="comma-separated: hnsw, vamana, ivf-pq")
    tr.add_argument("--n-queries", type=int, default=1000)
    tr.add_argument("--out", default="bench-results")
    soak = sub.add_parser("soak", help="a load test of the server on loopback: failed requests, p99 over time, "
                                       "resident memory growth")
    soak.add_argument("--n", type=int, default=20_000, help="records in the collection")
    soak.add_argument("--clients", type=int, default=16)
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--out", default="bench-results")
    churn = sub.add_parser("churn", help="upsert/delete churn on a working set: disk, memory and recall against a "
                                         "fresh collection of the same records")
    churn.add_argument("--working", type=int, default=20_000)
    churn.add_argument("--ops", type=int, default=500_000)
    churn.add_argument("--batch", type=int, default=500)
    churn.add_argument("--every", type=int, default=50_000, help="operations between two points of the curve")
    churn.add_argument("--out", default="bench-results")
    fields = sub.add_parser("fields", help="named vector fields (multivector, sparse) through the database vs the "
                                           "same indexes directly; the background fill of a new model")
    fields.add_argument("--n", type=int, default=20_000, help="WordNet records")
    fields.add_argument("--n-queries", type=int, default=300)
    fields.add_argument("--fill-n", type=int, default=2_000, help="documents the fill part embeds")
    fields.add_argument("--parts", default="multivector,sparse,fill")
    fields.add_argument("--out", default="bench-results")
    integ = sub.add_parser("integrations", help="the RAG framework stores (LangChain, LlamaIndex, Haystack) against "
                                                 "Collection.search and langchain-chroma: p50/p99 per query")
    integ.add_argument("--n-base", type=int, default=20_000)
    integ.add_argument("--n-queries", type=int, default=1000)
    integ.add_argument("--k", type=int, default=4, help="results per query (LangChain's default)")
    integ.add_argument("--stores", default=",".join(("direct", "langchain", "llamaindex", "haystack",
                                                     "langchain-chroma")))
    integ.add_argument("--out", default="bench-results")
    ir = sub.add_parser("ir", help="BM25 / dense / hybrid nDCG@10, MAP, R@100 on Cranfield and CACM, and BM25 "
                                   "build time and QPS on gcide, vs bm25s")
    ir.add_argument("--parts", default="effectiveness,speed", help="comma-separated: effectiveness,speed")
    ir.add_argument("--n-queries", type=int, default=5000, help="WordNet gloss queries for the speed part")
    ir.add_argument("--repeats", type=int, default=3, help="timed runs per point; the best counts")
    ir.add_argument("--depth", type=int, default=100, help="results of each list that hybrid fusion combines")
    ir.add_argument("--alpha", type=float, default=0.5, help="weight of the dense list in linear fusion")
    ir.add_argument("--approx", default="1.25,1.5,2", help="comma-separated approx factors for approximate bmp")
    ir.add_argument("--no-dense", action="store_true", help="skip dense and hybrid (no sentence-transformers)")
    ir.add_argument("--out", default="bench-results", help="folder for ir.json and the embedding cache")
    stream = sub.add_parser("streaming", help="Vamana (FreshDiskANN) vs hnswlib under delete/re-insert cycles "
                                              "with concurrent searches")
    stream.add_argument("--dataset", default="wordnet-minilm-384", choices=sorted(datasets.DATASETS))
    stream.add_argument("--libs", default="simdex,hnswlib", help="comma-separated: simdex,hnswlib")
    stream.add_argument("--n-base", type=int, default=None, help="use only the first N base vectors")
    stream.add_argument("--n-queries", type=int, default=1000)
    stream.add_argument("--cycles", type=int, default=10)
    stream.add_argument("--fraction", type=float, default=0.1, help="fraction deleted and re-inserted per cycle")
    stream.add_argument("--chunks", type=int, default=10, help="update calls per phase (delete, insert) per cycle")
    stream.add_argument("--L", type=int, default=64, help="fixed search budget: simdex beam L and hnswlib ef")
    stream.add_argument("--R", type=int, default=32)
    stream.add_argument("--L-build", type=int, default=64)
    stream.add_argument("--alpha", type=float, default=1.2)
    stream.add_argument("--M", type=int, default=16)
    stream.add_argument("--ef-construction", type=int, default=200)
    stream.add_argument("--threads", type=int, default=None, help="threads of the update calls (default: all)")
    stream.add_argument("--out", default="bench-results")
    calls = sub.add_parser("calls", help="the fixed cost of one query per call: each index kind's single-query "
                                          "search vs its batch search, through a collection, and hnswlib's")
    calls.add_argument("--kinds", default=",".join(("hnsw", "hnsw-lvq8", "hnsw-int8", "rabitq-graph", "ivf-pq",
                                                     "vamana", "vamana-disk", "spann", "flat")))
    calls.add_argument("--n-base", type=int, default=20_000)
    calls.add_argument("--n-queries", type=int, default=1000)
    calls.add_argument("--efforts", default="16,64", help="comma-separated search efforts (ef, L or nprobe)")
    calls.add_argument("--rounds", type=int, default=5, help="interleaved timed passes; the median counts")
    calls.add_argument("--out", default="bench-results")
    dist = sub.add_parser("distributed", help="distributed collections on a local Ray (shards x replicas) vs a "
                                              "single-node collection: upserts, recall, latency, throughput")
    dist.add_argument("--layouts", default="local,1x1,2x1,1x2", help="comma-separated: local and SxR layouts")
    dist.add_argument("--n-base", type=int, default=20_000)
    dist.add_argument("--n-queries", type=int, default=500)
    dist.add_argument("--ef", type=int, default=32)
    dist.add_argument("--clients", type=int, default=4, help="threads issuing single queries at once")
    dist.add_argument("--rounds", type=int, default=5, help="timed passes of the batch-100 searches (fastest counts)")
    dist.add_argument("--data", default="wordnet", choices=("wordnet", "disk"),
                      help="WordNet records, or the disk benchmark's 2M-row set (vectors only)")
    dist.add_argument("--index", default=None, help='the collection index as JSON, e.g. \'{"index": "ivf-pq"}\'')
    dist.add_argument("--work-dir", default="/tmp/simdex-disk", help="where the disk set is (made if absent)")
    dist.add_argument("--embed-docs", type=int, default=0,
                      help="also time upserting this many WordNet glosses as text, embedded by MiniLM, per layout")
    dist.add_argument("--out", default="bench-results")
    merge = sub.add_parser("merge", help="what one merge (and the checkpoint after it) of a code collection costs")
    merge.add_argument("--index", default="hnsw-lvq8", choices=("hnsw-lvq8", "hnsw-int8", "ivf-pq", "ivf-rabitq"))
    merge.add_argument("--n0", type=int, default=90_000, help="rows in the collection before the merges")
    merge.add_argument("--step", type=int, default=5_000, help="rows per merge")
    merge.add_argument("--out", default="bench-results")
    vdisk = sub.add_parser("vamana-disk", help="SSD-resident Vamana: recall and resident memory of the search phase")
    vdisk.add_argument("--dataset", default="wordnet-minilm-384", choices=sorted(datasets.DATASETS))
    vdisk.add_argument("--n-base", type=int, default=None)
    vdisk.add_argument("--n-queries", type=int, default=1000)
    vdisk.add_argument("--codec", default="pq48")
    vdisk.add_argument("--R", type=int, default=32)
    vdisk.add_argument("--L-build", type=int, default=64)
    vdisk.add_argument("--L", default="32,64,100,150", help="comma-separated beam sizes")
    vdisk.add_argument("--work-dir", default="/tmp/simdex-vamana-disk")
    vdisk.add_argument("--out", default="bench-results")
    mv = sub.add_parser("multivector", help="late-interaction retrieval on MiniLM token embeddings: MUVERA vs the "
                                            "token-level heuristic vs brute-force Chamfer; nDCG on Cranfield/CACM")
    mv.add_argument("--collections", default="cranfield,cacm,glosses", help="comma-separated: cranfield,cacm,glosses")
    mv.add_argument("--gloss-docs", type=int, default=20_000, help="WordNet glosses used as documents")
    mv.add_argument("--gloss-queries", type=int, default=500, help="glosses of the query split used as queries")
    mv.add_argument("--k-sim", type=int, default=None, help="MUVERA SimHash bits (default: the recommended setting)")
    mv.add_argument("--d-proj", type=int, default=None)
    mv.add_argument("--r-reps", type=int, default=None)
    mv.add_argument("--d-final", type=int, default=None)
    mv.add_argument("--recommended", type=int, default=200, help="MUVERA candidates of the recommended setting")
    mv.add_argument("--latency-queries", type=int, default=50, help="queries timed one at a time per method")
    mv.add_argument("--keep-special", action="store_true", help="keep the [CLS] and [SEP] token vectors")
    mv.add_argument("--no-reductions", action="store_true", help="skip the pruning / k-means / int8 measurements")
    mv.add_argument("--synthetic", default=None, metavar="DOCS,QUERIES",
                    help="no model: real WordNet sentence vectors grouped into DOCS documents and QUERIES queries")
    mv.add_argument("--out", default="bench-results", help="folder for the JSON, PNG and the embedding cache")
    emb = sub.add_parser("embed", help="built-in MiniLM embedder: fidelity to the reference vectors and texts/s "
                                       "vs sentence-transformers (torch, CPU) on WordNet glosses")
    emb.add_argument("--n-texts", type=int, default=2000, help="first N WordNet glosses")
    emb.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    emb.add_argument("--batch-size", type=int, default=64)
    emb.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per side; the best counts")
    emb.add_argument("--no-st", action="store_true", help="skip sentence-transformers (fidelity and MiniLM speed only)")
    emb.add_argument("--parts", default="embedder,import,retrieval,demo",
                     help="comma-separated: embedder (fidelity, speed), import, retrieval (IR sets), demo")
    emb.add_argument("--import-docs", type=int, default=10_000, help="glosses in the import part")
    emb.add_argument("--out", default="bench-results", help="folder for embed.json")
    gpu = sub.add_parser("gpu", help="exact GPU search: batch-1 bytes/s against a device copy, batch-1024 QPS "
                                     "against naive torch (synthetic data made on the device)")
    gpu.add_argument("--n", type=int, default=1_000_000)
    gpu.add_argument("--dim", type=int, default=384)
    gpu.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    gpu.add_argument("--batch", type=int, default=1024)
    gpu.add_argument("--k", default="10,100", help="comma-separated k values")
    gpu.add_argument("--repeats", type=int, default=5)
    gpu.add_argument("--device", default="auto")
    gpu.add_argument("--stream", action="store_true",
                     help="also GPUFlatIndex(storage='host'): vectors in host memory streamed to the device")
    gpu.add_argument("--stream-n", type=int, default=4_000_000, help="vectors of the --stream index")
    gpu.add_argument("--ivf", action="store_true", help="also IVF-PQ on synthetic clustered data (--ivf-n x 96)")
    gpu.add_argument("--ivf-n", type=int, default=10_000_000)
    gpu.add_argument("--fashion-mnist", default=None, metavar="PACK",
                     help="also IVF-PQ on Fashion-MNIST read from this uint8 pack (made by --pack-fashion-mnist)")
    gpu.add_argument("--pack-fashion-mnist", default=None, metavar="PACK",
                     help="only write Fashion-MNIST as a uint8 pack here (to carry to a GPU machine), then exit")
    gpu.add_argument("--out", default="bench-results", help="folder for gpu.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bench in (None, "ann"):
        if args.bench is None:
            args = build_parser().parse_args(["ann"])
        from . import ann
        efs = tuple(int(e) for e in args.ef.split(",")) if args.ef else ann.DEFAULT_EFS
        for name in args.dataset or list(datasets.DATASETS):
            report = ann.run(name, args.libs.split(","), M=args.M, ef_construction=args.ef_construction, efs=efs,
                             k=args.k, threads=args.threads, n_base=args.n_base, n_queries=args.n_queries,
                             repeats=args.repeats)
            _record(ann, report, args.out, argv)
        return 0
    if args.bench == "frontier":
        from . import ann, frontier
        efs = tuple(int(e) for e in args.ef.split(",")) if args.ef else ann.DEFAULT_EFS
        report = frontier.run(tuple(args.dataset or frontier.DATASETS), tuple(args.libs.split(",")), M=args.M,
                              ef_construction=args.ef_construction, efs=efs, threads=args.threads,
                              n_base=args.n_base, n_queries=args.n_queries, repeats=args.repeats)
        _record(frontier, report, args.out, argv)
        return 0
    if args.bench == "disk":
        from . import disk as disk_bench
        if args.through == "database":
            report = disk_bench.run_db(n=args.n, limit_mb=args.limit_mb, n_queries=args.n_queries, sigma=args.sigma,
                                       index=args.index, params=args.index_params, batch=args.batch,
                                       work_dir=args.work_dir)
            _record(disk_bench, report, args.out, argv)
            return 0
        report = disk_bench.run(n=args.n, limit_mb=args.limit_mb, n_queries=args.n_queries, sigma=args.sigma,
                                list_size=args.list_size, closure_eps=args.closure_eps,
                                max_replicas=args.max_replicas, sample=args.sample, work_dir=args.work_dir)
        _record(disk_bench, report, args.out, argv)
        return 0
    if args.bench == "quant":
        from . import quant as qbench
        for name in args.dataset or ["wordnet-minilm-384", "fashion-mnist-784"]:
            report = qbench.run(name, parts=tuple(args.parts.split(",")), M=args.M,
                                ef_construction=args.ef_construction, threads=args.threads, k=args.k,
                                n_base=args.n_base, n_queries=args.n_queries, repeats=args.repeats,
                                codecs=tuple(c for c in args.codecs.split(",") if c),
                                peers=tuple(p for p in args.peers.split(",") if p), nlist=args.nlist, m=args.m)
            _record(qbench, report, args.out, argv)
        return 0
    if args.bench == "target-recall":
        from . import target_recall as tr_bench
        names = tuple(args.dataset or ("fashion-mnist-784", "wordnet-minilm-384", "glove-50"))
        report = tr_bench.run(names, tuple(args.index.split(",")), args.n_queries)
        _record(tr_bench, report, args.out, argv)
        return 0
    if args.bench == "soak":
        from . import soak as soak_bench
        report = soak_bench.run(args.n, args.clients, args.minutes)
        _record(soak_bench, report, args.out, argv)
        return 0
    if args.bench == "churn":
        from . import churn as churn_bench
        report = churn_bench.run(args.working, args.ops, args.batch, args.every)
        _record(churn_bench, report, args.out, argv)
        return 0
    if args.bench == "fields":
        from . import fields as fields_bench
        report = fields_bench.run(args.n, args.n_queries, 10, args.fill_n, tuple(args.parts.split(",")))
        _record(fields_bench, report, args.out, argv)
        return 0
    if args.bench == "integrations":
        from . import integrations as integ_bench
        report = integ_bench.run(args.n_base, args.n_queries, args.k, tuple(args.stores.split(",")))
        _record(integ_bench, report, args.out, argv)
        return 0
    if args.bench == "sets":
        from . import sets as sets_bench
        report = sets_bench.run(num_perm=args.num_perm, repeats=args.repeats, ds_docs=args.datasketch_docs,
                                pairs_per_point=args.pairs, threshold=args.threshold, ngram=args.ngram,
                                fp_rate=args.fp_rate, out_dir=Path(args.out), with_datasketch=not args.no_datasketch,
                                parts=tuple(args.parts.split(",")), planted=args.planted, batch=args.batch)
        _record(sets_bench, report, args.out, argv)
        return 0
    if args.bench == "ir":
        from . import ir as ir_bench
        report = ir_bench.run(tuple(args.parts.split(",")), out_dir=Path(args.out), n_queries=args.n_queries,
                              repeats=args.repeats, depth=args.depth, alpha=args.alpha,
                              approx=tuple(float(a) for a in args.approx.split(",") if a),
                              with_dense=not args.no_dense)
        _record(ir_bench, report, args.out, argv)
        return 0
    if args.bench == "streaming":
        from . import streaming
        report = streaming.run(args.dataset, n_base=args.n_base, n_queries=args.n_queries, cycles=args.cycles,
                               fraction=args.fraction, chunks=args.chunks, L=args.L, R=args.R, L_build=args.L_build,
                               alpha=args.alpha, M=args.M, ef_construction=args.ef_construction,
                               threads=args.threads, libs=tuple(args.libs.split(",")))
        _record(streaming, report, args.out, argv)
        return 0
    if args.bench == "gpu":
        from . import gpu as gpu_bench
        if args.pack_fashion_mnist:
            print(f"wrote {gpu_bench.pack_fashion_mnist(args.pack_fashion_mnist)}")
            return 0
        report = gpu_bench.run(args.n, args.dim, args.dtype, args.batch, tuple(int(k) for k in args.k.split(",")),
                               args.repeats, args.device)
        if args.stream:
            report["streamed"] = gpu_bench.run_streamed(args.stream_n, args.dim, args.dtype, (1, args.batch),
                                                        repeats=args.repeats, device=args.device)
        if args.ivf:
            report["ivf"] = gpu_bench.run_ivf(n=args.ivf_n, repeats=args.repeats, device=args.device)
        if args.fashion_mnist:
            report["ivf_fashion_mnist"] = gpu_bench.run_ivf_fashion_mnist(args.fashion_mnist, repeats=args.repeats,
                                                                          device=args.device)
        _record(gpu_bench, report, args.out, argv)
        return 0
    if args.bench == "calls":
        from . import calls as calls_bench
        report = calls_bench.run(tuple(args.kinds.split(",")), n_base=args.n_base, n_queries=args.n_queries,
                                 efforts=tuple(int(e) for e in args.efforts.split(",")), rounds=args.rounds)
        _record(calls_bench, report, args.out, argv)
        return 0
    if args.bench == "distributed":
        from . import distributed as dist_bench
        report = dist_bench.run(args.layouts, n_base=args.n_base, n_queries=args.n_queries, ef=args.ef,
                                clients=args.clients, rounds=args.rounds, data=args.data,
                                index=None if args.index is None else json.loads(args.index), work_dir=args.work_dir,
                                embed_docs=args.embed_docs)
        _record(dist_bench, report, args.out, argv)
        return 0
    if args.bench == "merge":
        from . import merge as merge_bench
        _record(merge_bench, merge_bench.run(index=args.index, n0=args.n0, step=args.step), args.out, argv)
        return 0
    if args.bench == "vamana-disk":
        from . import vamana_disk
        report = vamana_disk.run(args.dataset, n_base=args.n_base, n_queries=args.n_queries, codec=args.codec,
                                 R=args.R, L_build=args.L_build, Ls=tuple(int(x) for x in args.L.split(",")),
                                 work_dir=args.work_dir)
        _record(vamana_disk, report, args.out, argv)
        return 0
    if args.bench == "multivector":
        from . import multivector as mv_bench
        encoder = dict(mv_bench.RECOMMENDED)
        for key in ("k_sim", "d_proj", "r_reps", "d_final"):
            if getattr(args, key) is not None:
                encoder[key] = getattr(args, key)
        synthetic = tuple(int(x) for x in args.synthetic.split(",")) if args.synthetic else None
        report = mv_bench.run(tuple(c for c in args.collections.split(",") if c), out_dir=Path(args.out),
                              n_docs=args.gloss_docs, n_queries=args.gloss_queries, keep_special=args.keep_special,
                              encoder=encoder, latency_queries=args.latency_queries, recommended=args.recommended,
                              synthetic=synthetic, reductions=not args.no_reductions)
        _record(mv_bench, report, args.out, argv)
        return 0
    if args.bench == "embed":
        from . import embed as embed_bench
        report = embed_bench.run(n_texts=args.n_texts, threads=tuple(int(t) for t in args.threads.split(",") if t),
                                 batch_size=args.batch_size, repeats=args.repeats, with_st=not args.no_st,
                                 parts=tuple(p for p in args.parts.split(",") if p), out_dir=Path(args.out),
                                 import_docs=args.import_docs)
        _record(embed_bench, report, args.out, argv)
        return 0
    if args.bench == "startup":
        from .startup import format_startup, measure
        result = measure(tuple(args.scenarios.split(",")), tuple(args.modes.split(",")), args.profile)
        print(format_startup(result))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        command = "python -m simdex.bench " + " ".join(argv if argv is not None else sys.argv[1:])
        (Path(args.out) / "startup.json").write_text(json.dumps({"command": command, **result}, indent=1))
        print(f"wrote {Path(args.out) / 'startup.json'}")
        return 0
    if args.bench == "db":
        from . import db as dbbench
        report = dbbench.run(n_base=args.n_base, n_queries=args.n_queries, libs=tuple(args.libs.split(",")),
                             batch=args.batch, threads=args.threads)
        _record(dbbench, report, args.out, argv)
        return 0
    if args.bench == "filtered":
        from . import filtered
        filtered.run(args.dataset, n_queries=args.n_queries, out_dir=Path(args.out))
        return 0
    if args.bench == "window":
        from . import window as window_bench
        for name in args.dataset or ["fashion-mnist-784"]:
            report = window_bench.run(name, n_base=args.n_base, n_queries=args.n_queries, k=args.k,
                                      branching=args.branching, leaf_size=args.leaf_size, M=args.M,
                                      ef_construction=args.ef_construction, budget_s=args.budget,
                                      build_threads=args.threads)
            _record(window_bench, report, args.out, argv, table=False)  # run() logged it
        return 0
    if args.bench == "labels":
        from . import labels as labels_bench
        for name in args.dataset or ["fashion-mnist-784"]:
            report = labels_bench.run(name, n_base=args.n_base, n_queries=args.n_queries, k=args.k, M=args.M,
                                      ef_construction=args.ef_construction,
                                      label_graph_min=args.label_graph_min, budget_s=args.budget,
                                      build_threads=args.threads)
            _record(labels_bench, report, args.out, argv, table=False)  # run() logged it
        return 0
    if args.bench == "crash":
        import tempfile

        from . import crash
        data = datasets.load("wordnet-minilm-384")
        with tempfile.TemporaryDirectory(prefix="simdex-crash-") as scratch:
            stats = crash.run(args.workdir or scratch, data.base[:3_000], data.queries[:50], kills=args.kills,
                              seed=args.seed, max_wait=args.max_wait, disk_full=args.disk_full,
                              fs_size=args.fs_size_mb << 20)
        summary = stats.summary()
        summary["command"] = "python -m simdex.bench " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "crash.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
        return 1 if stats.failures else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
