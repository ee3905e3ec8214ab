"""``python -m simdex.bench embed``: the built-in MiniLM embedder against sentence-transformers (torch, CPU).

Fidelity: MiniLM vectors of the first ``n_texts`` WordNet glosses (``../shared/data/wordnet-minilm``) against the
reference vectors shipped with the data (all-MiniLM-L6-v2 through sentence-transformers, float16): cosine per row,
target min >= 0.999 and mean >= 0.9999.

Import: 10,000 glosses end to end (embed + upsert, then the graph build) through a collection, in fresh processes:
the built-in embedder, sentence-transformers + upsert, and the vectors given; time and peak memory.

Retrieval: Cranfield and CACM through a text-first collection (dense, BM25, hybrid text search) against the numbers
of ``python -m simdex.bench ir`` from the same run; the demo collection's text search (recall@10 of held-out
glosses by their text, beside search by their reference vectors).

Speed: texts per second on the same glosses, batch 64, at each thread count: MiniLM with ``threads=t`` and
``SentenceTransformer(path, device="cpu").encode(texts, batch_size=64)`` with ``torch.set_num_threads(t)``, in the
same process, runs interleaved (MiniLM, sentence-transformers, MiniLM, ...) after one warm-up each; the best of
``repeats`` runs counts for each side. Target: MiniLM / sentence-transformers >= 1.0 at 1 and 2 threads.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from . import write_report
from .._numba import cpu_count
from ._common import pyplot, recall

MIN_COS, MEAN_COS = 0.999, 0.9999


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("numba", "tokenizers", "torch", "sentence_transformers", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = ", ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
                                for i in threadpool_info() if i.get("user_api") == "blas")
    except ImportError:
        pass
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


PARTS = ("embedder", "import", "retrieval", "demo")


def run(n_texts: int = 2000, threads: tuple[int, ...] = (1, 2), batch_size: int = 64, repeats: int = 3,
        with_st: bool = True, parts: tuple[str, ...] = PARTS, out_dir: Path = Path("bench-results"),
        import_docs: int = 10_000) -> dict[str, Any]:
    report: dict[str, Any] = {}
    if "embedder" in parts:
        report.update(run_embedder(n_texts, threads, batch_size, repeats, with_st))
    if "import" in parts:
        report["import"] = import_run(import_docs, with_st=with_st)
    if "retrieval" in parts:
        report["retrieval"] = retrieval(out_dir)
    if "demo" in parts:
        report["demo"] = demo()
    return report


def run_embedder(n_texts: int = 2000, threads: tuple[int, ...] = (1, 2), batch_size: int = 64, repeats: int = 3,
                 with_st: bool = True) -> dict[str, Any]:
    """Fidelity and speed of MiniLM (see the module docstring)."""
    from ..embed import MiniLM
    from .ir import load_glosses
    texts = load_glosses(0, n_texts)
    reference = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")[:len(texts)]
    model = MiniLM()
    t0 = time.perf_counter()
    vectors = model(texts[:8])
    first_call_s = time.perf_counter() - t0
    vectors = model(texts, batch_size=batch_size)
    counts = model.count_tokens(texts)
    cos = _cosines(vectors, reference)
    report: dict[str, Any] = {
        "machine": {"cpus": cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": _versions(),
        "texts": len(texts), "batch_size": batch_size, "repeats": repeats,
        "tokens": {"mean": float(counts.mean()), "max": int(counts.max()), "total": int(counts.sum())},
        "minilm": {"fingerprint": model.fingerprint, "first_call_s": first_call_s},
        "fidelity": {"min_cos": float(cos.min()), "mean_cos": float(cos.mean()),
                     "worst_row": int(cos.argmin()), "target_min": MIN_COS, "target_mean": MEAN_COS,
                     "met": bool(cos.min() >= MIN_COS and cos.mean() >= MEAN_COS)},
    }
    st = None
    if with_st:
        import torch
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(str(model.model_path), device="cpu")
        st_vectors = st.encode(texts, batch_size=batch_size)
        st_cos = _cosines(st_vectors, reference)
        mine = _cosines(vectors, st_vectors)
        report["fidelity"]["sentence_transformers_vs_reference"] = {"min_cos": float(st_cos.min()),
                                                                    "mean_cos": float(st_cos.mean())}
        report["fidelity"]["minilm_vs_sentence_transformers"] = {"min_cos": float(mine.min()),
                                                                 "mean_cos": float(mine.mean())}
    speed = []
    for t in threads:
        row: dict[str, Any] = {"threads": t, "minilm_s": [], "st_s": []}
        model(texts[:2 * batch_size], batch_size=batch_size, threads=t)   # warm-up
        if st is not None:
            previous = torch.get_num_threads()
            torch.set_num_threads(t)
            st.encode(texts[:2 * batch_size], batch_size=batch_size)
        try:
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(texts, batch_size=batch_size, threads=t)
                row["minilm_s"].append(time.perf_counter() - t0)
                if st is not None:
                    t0 = time.perf_counter()
                    st.encode(texts, batch_size=batch_size)
                    row["st_s"].append(time.perf_counter() - t0)
        finally:
            if st is not None:
                torch.set_num_threads(previous)
        row["minilm_texts_per_s"] = len(texts) / min(row["minilm_s"])
        if st is not None:
            row["st_texts_per_s"] = len(texts) / min(row["st_s"])
            row["ratio"] = row["minilm_texts_per_s"] / row["st_texts_per_s"]
            row["paired_ratios"] = [s / m for m, s in zip(row["minilm_s"], row["st_s"])]
        speed.append(row)
        print(f"threads={t}: MiniLM {row['minilm_texts_per_s']:.1f} texts/s" +
              (f", sentence-transformers {row['st_texts_per_s']:.1f} texts/s, ratio {row['ratio']:.2f}x"
               if "ratio" in row else ""), flush=True)
    report["speed"] = speed
    report["speed_met"] = bool(speed) and all(r.get("ratio", 0.0) >= 1.0 for r in speed) if with_st else None
    return report


# ---- import, retrieval and the demo collection, through a collection ------------------------------------------
_IMPORT_SCRIPT = """
import json, sys, tempfile, time
import numpy as np
import simdex
from simdex.bench.ir import load_glosses
variant, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
texts = load_glosses(0, n)
ids = [f"g{i}" for i in range(n)]
with tempfile.TemporaryDirectory() as folder:
    db = simdex.connect(folder + "/db", background=False)
    t0 = time.perf_counter()
    if variant == "minilm":
        col = db.create_collection("g", embedder="minilm")
        for s in range(0, n, batch):
            col.upsert(ids[s:s + batch], documents=texts[s:s + batch])
    else:
        if variant == "sentence-transformers":
            from sentence_transformers import SentenceTransformer
            from simdex.bench.ir import dense_model_path
            model = SentenceTransformer(dense_model_path(), device="cpu")
            encode = lambda part: model.encode(part, batch_size=64, normalize_embeddings=True)
        else:  # vectors given: what the import costs without embedding
            from simdex import datasets
            given = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy")[:n].astype(np.float32)
            encode = None
        col = db.create_collection("g", dim=384)
        for s in range(0, n, batch):
            vectors = encode(texts[s:s + batch]) if encode else given[s:s + batch]
            col.upsert(ids[s:s + batch], vectors, documents=texts[s:s + batch])
    upserted = time.perf_counter() - t0
    db.optimize()
    total = time.perf_counter() - t0
    count = col.count()
    db.close()
# VmHWM is this process's own peak: ru_maxrss would count the parent's memory at the fork
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"variant": variant, "documents": count, "embed_upsert_s": upserted, "with_index_s": total,
                  "docs_per_s": count / upserted, "peak_rss_mib": peak_kib / 1024}))
"""


def import_run(n_docs: int = 10_000, batch: int = 1_000, with_st: bool = True) -> list[dict[str, Any]]:
    """A ``n_docs``-gloss import end to end (embed + upsert, then the graph build), each variant in a fresh
    process so that its peak memory is its own: simdex embedding (documents only), sentence-transformers
    embedding + simdex upsert, and the vectors given (no embedding)."""
    import subprocess
    import sys
    rows = []
    for variant in ("minilm", *(("sentence-transformers",) if with_st else ()), "vectors-given"):
        done = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, variant, str(n_docs), str(batch)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"import {variant}: {rows[-1]['docs_per_s']:.0f} docs/s, peak {rows[-1]['peak_rss_mib']:.0f} MiB",
              flush=True)
    return rows


def retrieval(out_dir: Path, depth: int = 100) -> dict[str, Any]:
    """Cranfield and CACM through a collection (embedder="minilm", text=True, flat index: exact like the
    reference): dense, BM25 and hybrid text search against the numbers of ``python -m simdex.bench ir`` computed
    in the same run (sentence-transformers embeddings, exact cosine, the same BM25 and RRF)."""
    import tempfile

    from .. import connect
    from . import ir
    out: dict[str, Any] = {}
    pairs = (("dense", "dense-minilm"), ("bm25", "simdex-bm25"), ("hybrid", "hybrid-rrf"))
    for name in ir.COLLECTIONS:
        data = ir.load_ir(name)
        reference = ir.effectiveness(name, out_dir, depth=depth)["systems"]
        with tempfile.TemporaryDirectory() as folder:
            db = connect(folder + "/db", background=False)
            col = db.create_collection(name, embedder="minilm", text=True, index="flat")
            for s in range(0, len(data["docs"]), 1000):
                col.upsert(data["doc_ids"][s:s + 1000], documents=data["docs"][s:s + 1000])
            rows = {}
            for mode, ref_key in pairs:
                hits = col.search_batch(texts=data["queries"], k=100, mode=mode, depth=depth, include=["distances"])
                run = {qid: {h["id"]: (-h["distance"] if "distance" in h else h["score"]) for h in row}
                       for qid, row in zip(data["query_ids"], hits)}
                got = ir.evaluate(data["qrels"], run)
                rows[mode] = {"collection": got, "bench_ir": reference[ref_key],
                              "max_abs_diff": max(abs(got[m] - reference[ref_key][m]) for m in got)}
            db.close()
        out[name] = rows
        print(f"{name}: " + ", ".join(f"{m} nDCG@10 {r['collection']['nDCG@10']:.4f} (bench ir "
                                      f"{r['bench_ir']['nDCG@10']:.4f})" for m, r in rows.items()), flush=True)
    out["max_abs_diff"] = max(r["max_abs_diff"] for name in ir.COLLECTIONS for r in out[name].values())
    return out


def demo(n_queries: int = 1000, k: int = 10, ef: int = 64) -> dict[str, Any]:
    """The demo collection's text search: the 107,659 base glosses with their reference vectors in a collection
    with the MiniLM embedder (HNSW), queried by the texts of ``n_queries`` held-out glosses; recall@10 against
    the shared ground truth, beside the same search by the reference query vectors."""
    import tempfile

    from .. import connect
    from .ir import load_glosses
    data = datasets.load("wordnet-minilm-384")
    n_base = data.base.shape[0]
    texts = load_glosses(0, n_base + n_queries)
    with tempfile.TemporaryDirectory() as folder:
        db = connect(folder + "/db", background=False)
        col = db.create_collection("wordnet", embedder="minilm", text=True)
        ids = [str(i) for i in range(n_base)]
        for s in range(0, n_base, 5000):
            e = min(s + 5000, n_base)
            col.upsert(ids[s:e], data.base[s:e], documents=texts[s:e])
        t0 = time.perf_counter()
        db.optimize()
        build_s = time.perf_counter() - t0
        truth = data.ground_truth[:n_queries, :k]

        def recall_of(hits) -> float:
            return recall([np.array([int(h["id"]) for h in row], np.int64) for row in hits], truth)
        t0 = time.perf_counter()
        by_text = col.search_batch(texts=texts[n_base:n_base + n_queries], k=k, ef=ef, mode="dense", include=[])
        text_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        by_vector = col.search_batch(data.queries[:n_queries], k=k, ef=ef, include=[])
        vector_s = time.perf_counter() - t0
        db.close()
    res = {"base": n_base, "queries": n_queries, "k": k, "ef": ef, "graph_build_s": build_s,
           "recall_text": recall_of(by_text), "recall_vector": recall_of(by_vector),
           "ms_per_text_query": 1000 * text_s / n_queries, "ms_per_vector_query": 1000 * vector_s / n_queries}
    print(f"demo: recall@{k} by text {res['recall_text']:.4f}, by reference vector {res['recall_vector']:.4f}",
          flush=True)
    return res


def format_speed_row(row: dict[str, Any]) -> str:
    line = f"  {row['threads']:>7}{row['minilm_texts_per_s']:>14.1f}"
    if "ratio" in row:
        line += f"{row['st_texts_per_s']:>14.1f}{row['ratio']:>8.2f}x"
    return line


def format_report(report: dict[str, Any]) -> str:
    lines = [_format_embedder(report)] if "fidelity" in report else []
    if "import" in report:
        lines.append(f"import of {report['import'][0]['documents']:,} glosses (embed + upsert; then the graph build):")
        for row in report["import"]:
            lines.append(f"  {row['variant']:<22} {row['docs_per_s']:>8.0f} docs/s  embed+upsert "
                         f"{row['embed_upsert_s']:6.1f} s  with index {row['with_index_s']:6.1f} s  peak RSS "
                         f"{row['peak_rss_mib']:6.0f} MiB")
    if "retrieval" in report:
        lines.append("text search through a collection vs `simdex.bench ir` (nDCG@10 / MAP / R@100):")
        for name in ("cranfield", "cacm"):
            for mode, row in report["retrieval"][name].items():
                c, b = row["collection"], row["bench_ir"]
                lines.append(f"  {name:<9} {mode:<6} {c['nDCG@10']:.4f} / {c['MAP']:.4f} / {c['R@100']:.4f}   bench "
                             f"ir {b['nDCG@10']:.4f} / {b['MAP']:.4f} / {b['R@100']:.4f}")
        lines.append(f"  largest difference: {report['retrieval']['max_abs_diff']:.5f}")
    if "demo" in report:
        d = report["demo"]
        lines.append(f"demo collection ({d['base']:,} glosses, HNSW, ef {d['ef']}): recall@{d['k']} of "
                     f"{d['queries']} held-out glosses by text {d['recall_text']:.4f} ({d['ms_per_text_query']:.2f} "
                     f"ms/query), by reference vector {d['recall_vector']:.4f} ({d['ms_per_vector_query']:.2f} ms)")
    return "\n".join(lines)


def _format_embedder(report: dict[str, Any]) -> str:
    f = report["fidelity"]
    lines = [f"MiniLM (simdex.embed, fingerprint {report['minilm']['fingerprint']}) on {report['texts']} WordNet "
             f"glosses ({report['tokens']['mean']:.1f} tokens on average, at most {report['tokens']['max']}), "
             f"batch {report['batch_size']}",
             f"fidelity vs the reference vectors: min cos {f['min_cos']:.7f}, mean {f['mean_cos']:.7f} "
             f"(target >= {f['target_min']} / >= {f['target_mean']}: {'met' if f['met'] else 'NOT met'})"]
    if "minilm_vs_sentence_transformers" in f:
        g, s = f["minilm_vs_sentence_transformers"], f["sentence_transformers_vs_reference"]
        lines.append(f"  vs sentence-transformers here: min cos {g['min_cos']:.7f}, mean {g['mean_cos']:.7f}; "
                     f"sentence-transformers vs reference: min {s['min_cos']:.7f}")
    lines.append(f"speed, texts/s (best of {report['repeats']} interleaved runs each):")
    lines.append(f"  {'threads':>7}{'MiniLM':>14}" + (f"{'sent.-transf.':>14}{'ratio':>9}"
                                                      if report.get("speed_met") is not None else ""))
    lines += [format_speed_row(r) for r in report["speed"]]
    if report.get("speed_met") is not None:
        lines.append(f"  speed target (ratio >= 1.0 at every thread count): "
                     f"{'met' if report['speed_met'] else 'NOT met'}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Texts/s of MiniLM and sentence-transformers per thread count, and docs/s of the import variants."""
    plt = pyplot()
    panels = [p for p in ("speed", "import") if p in report and report[p]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "speed":
            rows = report["speed"]
            x = np.arange(len(rows))
            ax.bar(x - 0.2, [r["minilm_texts_per_s"] for r in rows], 0.4, label="simdex MiniLM (numpy/numba)")
            if all("st_texts_per_s" in r for r in rows):
                ax.bar(x + 0.2, [r["st_texts_per_s"] for r in rows], 0.4, label="sentence-transformers (torch)")
            ax.set_xticks(x, [f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}" for r in rows])
            ax.set_ylabel("texts / s (WordNet glosses, batch 64)")
            ax.set_title("all-MiniLM-L6-v2 on the CPU")
            ax.legend(loc="upper left")
        else:
            rows = report["import"]
            ax.barh([r["variant"] for r in rows], [r["docs_per_s"] for r in rows])
            ax.set_xscale("log")
            ax.set_xlabel("documents / s, embed + upsert (log scale)")
            ax.set_title(f"import of {rows[0]['documents']:,} glosses")
            for i, r in enumerate(rows):
                ax.text(r["docs_per_s"], i, f" peak {r['peak_rss_mib']:.0f} MiB", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path | None]:
    return write_report(report, out_dir, "embed", plot if "speed" in report or "import" in report else None)
