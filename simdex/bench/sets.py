"""``python -m simdex.bench sets``: MinHash, MinHash LSH and LSHBloom against datasketch on the gcide dictionary.

Everything runs in one process on the same data: signature throughput, estimation error against exact Jaccard
(with the densification ablation), and end-to-end deduplication with precision/recall against an exact all-pairs
join, plus LSHBloom memory and false positives. Results go to ``bench-results/sets.json`` and ``sets.png``.
"""

from __future__ import annotations

import gc
import gzip
import json
import platform
import re
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from .._numba import cpu_count, num_threads
from ..sets import LSHBloom, MinHash, MinHashLSH, Shingler, jaccard
from ..sets.dedup import deduplicate, read_documents
from ..sets.exact import similarity_join
from ..sets.lsh import DEFAULT_WEIGHTS
from ..sets.shingle import HashedSets
from ._common import pyplot

GCIDE = "text/gcide.jsonl.gz"
_TOKEN = re.compile(r"[a-z0-9\u0080-\uffff]+")


def gcide_path() -> Path:
    return datasets.data_dir() / GCIDE


def load_gcide(n: int | None = None) -> list[str]:
    texts = []
    with gzip.open(gcide_path(), "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if n is not None and len(texts) >= n:
                break
    return texts


def python_shingles(text: str, ngram: int) -> list[bytes]:
    """The word n-grams a datasketch user would feed to MinHash: the same tokens as simdex's Shingler."""
    toks = _TOKEN.findall(text.lower())
    if not toks:
        return []
    if len(toks) < ngram:
        return [" ".join(toks).encode()]
    return list({" ".join(toks[i:i + ngram]).encode() for i in range(len(toks) - ngram + 1)})


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---- 1. signature throughput ----------------------------------------------------------------------------------------
def throughput(texts: list[str], num_perm: int, repeats: int, ds_docs: int) -> dict[str, Any]:
    import datasketch
    shingler = Shingler(5)
    mh = MinHash(num_perm)
    sets = shingler(texts)
    mh.signatures(HashedSets(sets.indptr[:2], sets.values[:sets.indptr[1]]))  # compile before timing
    out: dict[str, Any] = {"docs": len(texts), "datasketch_docs": ds_docs, "num_perm": num_perm}
    out["simdex_shingle_s"] = _best(lambda: shingler(texts), repeats)
    out["simdex_sign_s"] = _best(lambda: mh.signatures(sets), repeats)
    with num_threads(1):
        out["simdex_sign_1thread_s"] = _best(lambda: mh.signatures(sets), repeats)
        out["simdex_shingle_1thread_s"] = _best(lambda: shingler(texts), repeats)
    kperm = MinHash(num_perm, method="kperm")
    out["simdex_kperm_sign_s"] = _best(lambda: kperm.signatures(sets), repeats)
    sub = texts[:ds_docs]
    t = time.perf_counter()
    py_sets = [python_shingles(x, 5) for x in sub]
    out["python_shingle_s"] = time.perf_counter() - t
    out["datasketch_bulk_s"] = _best(lambda: datasketch.MinHash.bulk(py_sets, num_perm=num_perm), 1)

    def update_batch_loop() -> None:
        for s in py_sets:
            m = datasketch.MinHash(num_perm=num_perm)
            m.update_batch(s)

    def lean_loop() -> None:
        for m in datasketch.MinHash.generator(py_sets, num_perm=num_perm):
            datasketch.LeanMinHash(m)

    out["datasketch_update_batch_s"] = _best(update_batch_loop, 1)
    out["datasketch_lean_s"] = _best(lean_loop, 1)
    per_doc = {k[:-2]: v / (len(texts) if k.startswith("simdex") else ds_docs)
               for k, v in out.items() if k.endswith("_s")}
    out["docs_per_s"] = {k: 1.0 / v for k, v in per_doc.items()}
    best_ds = min(per_doc["datasketch_bulk"], per_doc["datasketch_update_batch"])
    simdex_sig = per_doc["simdex_sign"]
    simdex_e2e = per_doc["simdex_shingle"] + per_doc["simdex_sign"]
    ds_e2e = per_doc["python_shingle"] + best_ds
    out["ratio_signatures_vs_datasketch"] = best_ds / simdex_sig
    out["ratio_signatures_vs_lean"] = per_doc["datasketch_lean"] / simdex_sig
    out["ratio_text_to_signature_vs_datasketch"] = ds_e2e / simdex_e2e
    out["ratio_text_to_signature_1thread"] = ds_e2e / (per_doc["simdex_shingle_1thread"]
                                                       + per_doc["simdex_sign_1thread"])
    return out


# ---- 2. estimation error and the densification ablation ----------------------------------------------------------
def _pairs_with_jaccard(sets: HashedSets, rows: np.ndarray, target: float, rng: np.random.Generator
                        ) -> tuple[HashedSets, np.ndarray]:
    """For each row A (size a): B = x elements of A plus a - x elements of another real set, x = 2aJ/(1+J), so
    |B| = |A| and J(A, B) = x / (2a - x) close to ``target``. Returns the 2m sets (A0, B0, A1, B1, ...) and the
    exact Jaccard of each pair."""
    lists, exact = [], []
    donors = rng.permutation(len(sets))
    d = 0
    for r in rows:
        a = sets.row(r)
        size = a.shape[0]
        x = int(round(2 * size * target / (1 + target)))
        x = min(max(x, 1), size)
        extra = np.empty(0, a.dtype)
        while extra.shape[0] < size - x:
            cand = np.setdiff1d(sets.row(donors[d % len(donors)]), a)
            d += 1
            extra = np.union1d(extra, cand)
        b = np.concatenate([rng.choice(a, x, replace=False), rng.choice(extra, size - x, replace=False)])
        lists += [a, b]
        exact.append(x / (2 * size - x))
    indptr = np.zeros(len(lists) + 1, np.int64)
    np.cumsum([len(v) for v in lists], out=indptr[1:])
    return HashedSets(indptr, np.concatenate(lists)), np.array(exact)


def estimation_error(texts: list[str], num_perm: int, pairs_per_point: int, seed: int = 0) -> dict[str, Any]:
    sets = Shingler(5)(texts)
    sizes = sets.sizes()
    classes = {"sparse (10-40 shingles, d < k)": np.flatnonzero((sizes >= 10) & (sizes <= 40)),
               "dense (>= 256 shingles, d > k)": np.flatnonzero(sizes >= 256)}
    targets = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    methods = {"kperm": "classic k-permutation", "oph": "OPH + optimal densification",
               "oph-rotation": "OPH + rotation densification"}
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"targets": targets, "methods": methods, "pairs_per_point": pairs_per_point, "mse": {}}
    for cname, pool in classes.items():
        out["mse"][cname] = {m: [] for m in methods}
        for t in targets:
            rows = rng.choice(pool, pairs_per_point, replace=pool.shape[0] < pairs_per_point)
            pair_sets, exact = _pairs_with_jaccard(sets, rows, t, rng)
            for m in methods:
                # a fresh hash seed per pair would be ideal; sketches of independent pairs with one seed are
                # already independent trials, since the pairs share no elements by construction
                sig = MinHash(num_perm, method=m, seed=int(rng.integers(1 << 30))).signatures(pair_sets)
                est = jaccard(sig[0::2], sig[1::2])
                out["mse"][cname][m].append(float(np.mean((est - exact) ** 2)))
    for cname in classes:
        mse = out["mse"][cname]
        out.setdefault("ratio_oph_to_kperm", {})[cname] = [o / k for o, k in zip(mse["oph"], mse["kperm"])]
        out.setdefault("ratio_rotation_to_kperm", {})[cname] = [o / k for o, k in
                                                                 zip(mse["oph-rotation"], mse["kperm"])]
    return out


# ---- 3. deduplication ---------------------------------------------------------------------------------------------
def ground_truth(texts: list[str], threshold: float, ngram: int, cache: Path) -> np.ndarray:
    path = cache / f"gcide_gt_jaccard{threshold}_word{ngram}_n{len(texts)}.npy"
    if path.exists():
        return np.load(path)
    pairs, _ = similarity_join(Shingler(ngram)(texts), threshold)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, pairs)
    return pairs


def _pair_scores(found: np.ndarray, truth: np.ndarray, n: int) -> dict[str, float]:
    code = lambda p: set((p[:, 0].astype(np.int64) * n + p[:, 1]).tolist()) if p.size else set()  # noqa: E731
    f, t = code(np.sort(found, axis=1)), code(truth)
    tp = len(f & t)
    return {"found": len(f), "true": len(t), "tp": tp, "precision": tp / len(f) if f else 1.0,
            "recall": tp / len(t) if t else 1.0}


def _doc_scores(flagged: np.ndarray, truth: np.ndarray, n: int) -> dict[str, float]:
    """Document level: a document is a true duplicate when an earlier one has Jaccard >= threshold with it."""
    true_dup = np.zeros(n, bool)
    true_dup[truth.max(axis=1)] = True
    tp = int((flagged & true_dup).sum())
    return {"flagged": int(flagged.sum()), "true": int(true_dup.sum()), "tp": tp,
            "precision": tp / max(int(flagged.sum()), 1), "recall": tp / max(int(true_dup.sum()), 1)}


def datasketch_pipeline(threshold: float, ngram: int, num_perm: int) -> tuple[float, np.ndarray, dict[str, Any]]:
    """Read, shingle, MinHash (bulk), insert into MinHashLSH, query every document, keep candidates whose
    estimated Jaccard >= threshold: the usual datasketch dedup recipe."""
    import datasketch
    t = time.perf_counter()
    texts = []
    with gzip.open(gcide_path(), "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
    shingles = [python_shingles(x, ngram) for x in texts]
    mhs = datasketch.MinHash.bulk(shingles, num_perm=num_perm)
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(mhs):
            if shingles[i]:
                session.insert(i, m)
    pairs = []
    for i, m in enumerate(mhs):
        if not shingles[i]:
            continue
        for j in lsh.query(m):
            if j > i and m.jaccard(mhs[j]) >= threshold:
                pairs.append((i, j))
    elapsed = time.perf_counter() - t
    return elapsed, np.array(pairs, np.int64).reshape(-1, 2), {"bands": lsh.b, "rows": lsh.r}


def datasketch_index_memory(threshold: float, ngram: int, num_perm: int, texts: list[str]) -> int:
    """Bytes allocated by building datasketch's MinHashLSH over all documents (tracemalloc; not timed)."""
    import datasketch
    mhs = [datasketch.LeanMinHash(m) for m in
           datasketch.MinHash.bulk([python_shingles(x, ngram) for x in texts], num_perm=num_perm)]
    gc.collect()
    tracemalloc.start()
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(mhs):
            session.insert(i, m)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del lsh
    return int(current)


def dedup(texts: list[str], threshold: float, ngram: int, num_perm: int, cache: Path, fp_rate: float,
          with_datasketch: bool) -> dict[str, Any]:
    n = len(texts)
    truth = ground_truth(texts, threshold, ngram, cache)
    out: dict[str, Any] = {"docs": n, "threshold": threshold, "ngram": ngram, "true_pairs": int(truth.shape[0])}
    t = time.perf_counter()
    sj_sets = Shingler(ngram)(texts)
    similarity_join(sj_sets, threshold)
    out["exact_join_s"] = time.perf_counter() - t

    def run(bloom: bool, weights: tuple[float, float]) -> tuple[float, Any]:
        t0 = time.perf_counter()
        res = deduplicate(read_documents([gcide_path()]), threshold=threshold, ngram=ngram, num_perm=num_perm,
                          bloom=bloom, fp_rate=fp_rate, capacity=n, weights=weights, progress=False)
        return time.perf_counter() - t0, res

    run(False, DEFAULT_WEIGHTS)  # compile
    elapsed, res = run(False, DEFAULT_WEIGHTS)
    out["simdex_lsh"] = {"seconds": elapsed, "stats": res.stats, **_pair_scores(res.pairs, truth, n),
                         "doc_level": _doc_scores(~res.keep, truth, n)}
    for label, weights in (("simdex_bloom", DEFAULT_WEIGHTS), ("simdex_bloom_balanced", (0.5, 0.5))):
        elapsed, res_b = run(True, weights)
        out[label] = {"seconds": elapsed, "weights": list(weights), "stats": res_b.stats,
                      "doc_level": _doc_scores(~res_b.keep, truth, n)}
    # LSHBloom against a MinHashLSH with the same banding: same candidates (recall) and how many extra
    for label, weights in (("bloom_vs_index", DEFAULT_WEIGHTS), ("bloom_vs_index_balanced", (0.5, 0.5))):
        mh = MinHash(num_perm)
        sig = mh.signatures(sj_sets)
        nonempty = sj_sets.sizes() > 0
        index = MinHashLSH(threshold, num_perm, weights)
        keys = index.banding.keys(sig)[nonempty]
        index.insert_keys(keys, np.flatnonzero(nonempty))
        exact_flag = np.zeros(keys.shape[0], bool)  # an earlier document shares some band key
        for b in range(keys.shape[1]):
            _, first = np.unique(keys[:, b], return_index=True)
            seen = np.ones(keys.shape[0], bool)
            seen[first] = False
            exact_flag |= seen
        bloom = LSHBloom(threshold, num_perm, weights, capacity=n, fp_rate=fp_rate)
        bloom_flag = bloom.query_insert_keys(keys)
        negatives = int((~exact_flag).sum())
        out[label] = {"bands": index.bands, "rows": index.rows, "index_bytes": index.nbytes,
                      "bloom_bytes": bloom.nbytes, "memory_ratio": bloom.nbytes / index.nbytes,
                      "missed_vs_index": int((exact_flag & ~bloom_flag).sum()),
                      "false_positives": int((bloom_flag & ~exact_flag).sum()), "negatives": negatives,
                      "false_positive_rate": int((bloom_flag & ~exact_flag).sum()) / max(negatives, 1),
                      "configured_fp_rate": fp_rate}
    if with_datasketch:
        elapsed, pairs, params = datasketch_pipeline(threshold, ngram, num_perm)
        out["datasketch"] = {"seconds": elapsed, **params, **_pair_scores(pairs, truth, n)}
        out["datasketch_index_bytes"] = datasketch_index_memory(threshold, ngram, num_perm, texts)
        out["ratio_time_simdex_to_datasketch"] = out["simdex_lsh"]["seconds"] / elapsed
        out["ratio_bloom_memory_to_datasketch_index"] = out["simdex_bloom"]["stats"]["index_bytes"] / \
            out["datasketch_index_bytes"]
    return out


# ---- driver -------------------------------------------------------------------------------------------------------
# ---- 4. dedup on write, through the database ------------------------------------------------------------------------
def planted_duplicates(texts: list[str], count: int, seed: int = 0, max_replaced: float = 0.06) -> list[str]:
    """Near-copies of ``count`` random entries (of at least 20 words) for appending after ``texts``: each has a
    random share (0 to ``max_replaced``) of its words replaced by words of other entries, which spreads the copies'
    exact Jaccard with their sources over about 0.5-1 on 5-word shingles, around the usual thresholds."""
    rng = np.random.default_rng(seed)
    words = [t.split() for t in texts]
    long_enough = np.flatnonzero(np.array([len(w) >= 20 for w in words]))
    vocabulary = [w for ws in words[:5000] for w in ws]
    out = []
    for src in rng.choice(long_enough, count, replace=False).tolist():
        copy = list(words[src])
        changed = rng.random(len(copy)) < rng.uniform(0, max_replaced)
        for j in np.flatnonzero(changed).tolist():
            copy[j] = vocabulary[int(rng.integers(len(vocabulary)))]
        out.append(" ".join(copy))
    return out


def write_dedup(texts: list[str], threshold: float, ngram: int, num_perm: int, *, planted: int = 2500,
                batch: int = 1000, dim: int = 384, seed: int = 0) -> dict[str, Any]:
    """Upserts of every gcide entry (plus ``planted`` near-copies at the end) into a database collection with and
    without ``dedup``, in batches of ``batch`` records, each with a random ``dim``-d vector (the vector side costs
    the same either way; exact "flat" collections, so no background index build competes): throughput, and the
    flagged records against an exact all-pairs join of the same shingles."""
    import tempfile

    from .. import connect
    from ..sets.exact import pair_jaccard
    docs = texts + planted_duplicates(texts, planted, seed)
    n = len(docs)
    sets = Shingler(ngram)(docs)
    t = time.perf_counter()
    truth, _ = similarity_join(sets, threshold)
    out: dict[str, Any] = {"docs": n, "planted": planted, "threshold": threshold, "ngram": ngram, "batch": batch,
                           "dim": dim, "true_pairs": int(truth.shape[0]), "exact_join_s": time.perf_counter() - t}
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [f"d{i}" for i in range(n)]
    configs = {"plain": None,
               "flag": {"threshold": threshold, "ngram": ngram, "num_perm": num_perm, "on_duplicate": "flag"},
               "flag_bloom": {"threshold": threshold, "ngram": ngram, "num_perm": num_perm, "on_duplicate": "flag",
                              "bloom": True, "capacity": n}}
    with tempfile.TemporaryDirectory(prefix="simdex-bench-dedup-") as tmp, connect(tmp) as db:
        warm = db.create_collection("warm", dim, index="flat", dedup=configs["flag"])
        for start in (0, 1000):  # compile the kernels (lookups in a filled index, verification) before timing
            warm.upsert(ids[start:start + 1000], vectors[start:start + 1000], documents=docs[:500] * 2)
        for label, dedup_spec in configs.items():
            col = db.create_collection(label, dim, index="flat", dedup=dedup_spec)
            gc.collect()
            t = time.perf_counter()
            for start in range(0, n, batch):
                col.upsert(ids[start:start + batch], vectors[start:start + batch],
                           documents=docs[start:start + batch])
            elapsed = time.perf_counter() - t
            row: dict[str, Any] = {"seconds": elapsed, "records_per_s": n / elapsed}
            if dedup_spec is not None:
                of = {r["id"]: r["metadata"]["duplicate_of"] for r in col.get(include=["metadatas"])
                      if "duplicate_of" in r["metadata"]}
                flagged = np.zeros(n, bool)
                flagged[[int(i[1:]) for i in of]] = True
                row["doc_level"] = _doc_scores(flagged, truth, n)
                named = np.array([(int(i[1:]), int(o[1:])) for i, o in of.items() if isinstance(o, str)],
                                 np.int64).reshape(-1, 2)
                sims = pair_jaccard(sets, named) if named.size else np.zeros(0)
                row["named_pairs"] = int(named.shape[0])
                row["named_pairs_precision"] = float((sims >= threshold - 1e-9).mean()) if named.size else 1.0
                row["stats"] = col.stats()["dedup"]
            out[label] = row
            db.drop_collection(label)
    for label in ("flag", "flag_bloom"):
        out[f"ratio_{label}_to_plain"] = out[label]["records_per_s"] / out["plain"]["records_per_s"]
    return out


def run(*, num_perm: int = 128, repeats: int = 3, ds_docs: int = 20_000, pairs_per_point: int = 3000,
        threshold: float = 0.8, ngram: int = 5, fp_rate: float = 1e-4, out_dir: Path = Path("bench-results"),
        with_datasketch: bool = True, parts: tuple[str, ...] = ("throughput", "error", "dedup"),
        planted: int = 2500, batch: int = 1000) -> dict[str, Any]:
    texts = load_gcide()
    report: dict[str, Any] = {"machine": {"cpus": cpu_count(), "python": platform.python_version()},
                              "data": f"gcide ({len(texts)} entries)"}
    try:
        import datasketch
        report["datasketch_version"] = datasketch.__version__
    except ImportError:
        with_datasketch = False
    if "throughput" in parts and with_datasketch:
        report["throughput"] = throughput(texts, num_perm, repeats, ds_docs)
    if "error" in parts:
        report["error"] = estimation_error(texts, num_perm, pairs_per_point)
    if "dedup" in parts:
        report["dedup"] = dedup(texts, threshold, ngram, num_perm, out_dir, fp_rate, with_datasketch)
    if "write" in parts:
        report["write"] = write_dedup(texts, threshold, ngram, num_perm, planted=planted, batch=batch)
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"sets benchmark on {r['data']}, {r['machine']['cpus']} CPUs, datasketch {r.get('datasketch_version')}"]
    if "throughput" in r:
        t = r["throughput"]
        lines.append("signatures (num_perm={num_perm}): docs/s".format(**t))
        for k, v in t["docs_per_s"].items():
            lines.append(f"  {k:28s} {v:12,.0f}")
        lines.append(f"  ratio simdex/datasketch signatures (best of bulk, update_batch): "
                     f"{t['ratio_signatures_vs_datasketch']:.1f}x (target >= 20x); vs LeanMinHash path "
                     f"{t['ratio_signatures_vs_lean']:.1f}x (target >= 1x)")
        lines.append(f"  text -> signature end to end: {t['ratio_text_to_signature_vs_datasketch']:.1f}x "
                     f"({t['ratio_text_to_signature_1thread']:.1f}x with one thread)")
    if "error" in r:
        e = r["error"]
        for cname, mse in e["mse"].items():
            lines.append(f"MSE vs exact Jaccard, {cname}, {e['pairs_per_point']} pairs per point")
            lines.append("  J      " + " ".join(f"{t:8.1f}" for t in e["targets"]))
            for m in e["methods"]:
                lines.append(f"  {m:13s}" + " ".join(f"{v:8.5f}" for v in mse[m]))
            ratios = e["ratio_oph_to_kperm"][cname]
            lines.append(f"  oph/kperm MSE ratio: max {max(ratios):.2f}, mean {np.mean(ratios):.2f} "
                         f"(target <= 1.10); rotation/kperm max {max(e['ratio_rotation_to_kperm'][cname]):.2f}")
    if "dedup" in r:
        d = r["dedup"]
        lines.append(f"dedup: {d['docs']} docs, Jaccard >= {d['threshold']}, {d['ngram']}-word shingles; "
                     f"{d['true_pairs']} true pairs (exact join {d['exact_join_s']:.1f} s)")
        s = d["simdex_lsh"]
        lines.append(f"  simdex LSH   {s['seconds']:7.2f} s  pairs P {s['precision']:.3f} R {s['recall']:.3f} "
                     f"({s['stats']['bands']}x{s['stats']['rows']}, {s['stats']['candidates']} candidates)")
        for label in ("simdex_bloom", "simdex_bloom_balanced"):
            b = d[label]
            lines.append(f"  {label:21s} {b['seconds']:7.2f} s  docs P {b['doc_level']['precision']:.3f} "
                         f"R {b['doc_level']['recall']:.3f}  memory {b['stats']['index_bytes'] / 2**20:.2f} MiB")
        if "datasketch" in d:
            ds = d["datasketch"]
            lines.append(f"  datasketch   {ds['seconds']:7.2f} s  pairs P {ds['precision']:.3f} R {ds['recall']:.3f} "
                         f"({ds['bands']}x{ds['rows']}); simdex/datasketch time "
                         f"{d['ratio_time_simdex_to_datasketch']:.3f} (target <= 0.2)")
            lines.append(f"  datasketch MinHashLSH index {d['datasketch_index_bytes'] / 2**20:.1f} MiB; "
                         f"LSHBloom/datasketch index memory {d['ratio_bloom_memory_to_datasketch_index']:.4f} "
                         f"(target <= 0.05)")
        for label in ("bloom_vs_index", "bloom_vs_index_balanced"):
            b = d[label]
            lines.append(f"  LSHBloom vs simdex MinHashLSH ({b['bands']}x{b['rows']}): memory "
                         f"{b['bloom_bytes'] / 2**20:.2f} / {b['index_bytes'] / 2**20:.2f} MiB = "
                         f"{b['memory_ratio']:.3f}; missed {b['missed_vs_index']}; false positives "
                         f"{b['false_positives']}/{b['negatives']} = {b['false_positive_rate']:.2e} (target < 1e-3)")
    if "write" in r:
        w = r["write"]
        lines.append(f"dedup on write (database upserts, batches of {w['batch']}, {w['dim']}-d vectors, flat "
                     f"collections): {w['docs']} docs ({w['planted']} planted near-copies), Jaccard >= "
                     f"{w['threshold']}, {w['ngram']}-word shingles; {w['true_pairs']} true pairs")
        for label in ("plain", "flag", "flag_bloom"):
            row = w[label]
            line = f"  {label:11s} {row['records_per_s']:10,.0f} records/s"
            if "doc_level" in row:
                d = row["doc_level"]
                line += (f" ({w[f'ratio_{label}_to_plain']:.2f}x plain; target >= 0.5x)  flagged records P "
                         f"{d['precision']:.3f} R {d['recall']:.3f} ({d['tp']}/{d['true']}); named pairs "
                         f"{row['named_pairs']} with exact J >= t: {row['named_pairs_precision']:.3f}; index "
                         f"{row['stats']['index_bytes'] / 2**20:.1f} MiB")
            lines.append(line)
    return "\n".join(lines)


def save(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path | None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "sets.json"
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    if "error" not in report:
        return json_path, None
    plt = pyplot()
    if plt is None:
        return json_path, None
    e = report["error"]
    fig, axes = plt.subplots(1, len(e["mse"]), figsize=(6 * len(e["mse"]), 4.2))
    for ax, (cname, mse) in zip(np.atleast_1d(axes), e["mse"].items()):
        for m, label in e["methods"].items():
            ax.plot(e["targets"], mse[m], marker="o", label=label)
        ax.set_title(f"MinHash MSE vs exact Jaccard: {cname}")
        ax.set_xlabel("Jaccard similarity")
        ax.set_ylabel(f"MSE (num_perm={report.get('throughput', {}).get('num_perm', 128)})")
        ax.legend()
    fig.tight_layout()
    png_path = out_dir / "sets.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
