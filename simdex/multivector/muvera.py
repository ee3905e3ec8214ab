"""MUVERA fixed-dimensional encodings (Dhulipala, Hadian, Jayaram, Lee, Mirrokni, "MUVERA: Multi-Vector Retrieval
via Fixed Dimensional Encodings", NeurIPS 2024).

A set of vectors becomes one vector, its FDE, such that ``<FDE_q(Q), FDE_d(D)>`` approximates the Chamfer
similarity ``sum_{q in Q} max_{d in D} <q, d>``. Per repetition r = 1..R:

1. SimHash partition: ``k_sim`` random Gaussian hyperplanes split the space into ``B = 2**k_sim`` buckets; the
   bucket of x is the bit pattern of ``sign(<g_i, x>)``.
2. Per bucket, a query sums its vectors and a document *averages* its vectors. If q and its best match d fall in
   the same bucket, ``<sum of q's in bucket, mean of d's in bucket>`` is close to the MaxSim term of q (exactly
   when d is the bucket's only document vector).
3. Empty document buckets are filled with the document vector whose bucket is nearest in Hamming distance, so a
   query vector in a bucket the document does not occupy still meets the document's most similar-ish vector.
4. Each bucket's vector is projected to ``d_proj`` dimensions with a random +-1/sqrt(d_proj) matrix (an AMS
   sketch; inner products are preserved in expectation). ``d_proj = dim`` means no projection.

The R blocks are concatenated: ``R * 2**k_sim * d_proj`` dimensions, optionally compressed to ``d_final`` by a
count sketch. The encoding is data-oblivious: the random matrices depend only on ``seed`` (they are stored with
the index, so a saved index never depends on the random generator of a numpy version).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import check_positive_int
from ..errors import CorruptFileError, InvalidInputError
from . import _kernels as K

_CHUNK = 1 << 15  # rows projected per BLAS call: bounds the (rows, R * d_proj) temporaries
_SMALL = 256  # up to this many rows (a few queries), numba on one thread beats waking BLAS's threads


class MuveraEncoder:
    """Fixed-dimensional encodings of vector sets (see the module docstring for the construction).

    Parameters (and their recall / cost effect)
    ----------
    dim : int
        Dimension of the input vectors.
    k_sim : int, default 3
        SimHash bits per repetition: ``2**k_sim`` buckets. More buckets separate a query's vectors from
        unrelated document vectors (the approximation of each MaxSim term gets sharper, recall up) until most
        buckets of a short document are empty fill-ins (recall flattens); the FDE grows as ``2**k_sim``.
        ``k_sim = 0`` is one bucket: ``<sum of Q, mean of D>`` (a scaled mean-pooling baseline).
    d_proj : int, default 32
        Dimensions per bucket after the random projection. Larger keeps inner products more exactly (recall up,
        FDE size up linearly); ``d_proj = dim`` skips the projection.
    r_reps : int, default 16
        Independent repetitions, concatenated. Averaging over repetitions reduces the variance of the estimate
        (recall up with diminishing returns), FDE size and encoding time linear in R.
    d_final : int or None, default None
        Optional count-sketch projection of the concatenated FDE to ``d_final`` dimensions: smaller index and
        faster single-vector search, at some loss of recall (collisions add noise to the inner product).
    fill_empty : bool, default True
        Fill empty document buckets (step 3). Without it, query vectors in a bucket the document does not use
        contribute nothing, which loses recall on short documents.
    seed : int, default 0

    The defaults (4,096 dimensions) are the setting ``python -m simdex.bench multivector`` recommends for
    384-d MiniLM token vectors (docs/benchmarks-multivector.md); the paper's ColBERT setting is k_sim=5,
    d_proj=16, r_reps=20 (10,240). ``dim_fde = d_final or r_reps * 2**k_sim * d_proj`` float32 values per
    encoded set. Encoding costs two BLAS
    products per chunk of rows (``dim x R*k_sim`` and ``dim x R*d_proj``) plus a linear pass.
    """

    def __init__(self, dim: int, k_sim: int = 3, d_proj: int = 32, r_reps: int = 16, d_final: int | None = None,
                 fill_empty: bool = True, seed: int = 0) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.k_sim = check_positive_int(k_sim, "k_sim", minimum=0)
        if self.k_sim > 16:
            raise InvalidInputError(f"k_sim must be <= 16 (2**k_sim buckets per repetition); got {k_sim}")
        self.d_proj = check_positive_int(d_proj, "d_proj")
        if self.d_proj > self.dim:
            raise InvalidInputError(f"d_proj must be <= dim={self.dim}; got {d_proj}")
        self.r_reps = check_positive_int(r_reps, "r_reps")
        self.d_final = None if d_final is None else check_positive_int(d_final, "d_final")
        self.fill_empty = bool(fill_empty)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        rng = np.random.default_rng(self.seed)
        self.simhash = rng.standard_normal((self.dim, self.r_reps * self.k_sim)).astype(np.float32)
        if self.d_proj == self.dim:
            self.projection = np.empty((0, 0), np.float32)  # identity
        else:
            signs = rng.integers(0, 2, (self.dim, self.r_reps * self.d_proj)) * 2 - 1
            self.projection = (signs / np.sqrt(self.d_proj)).astype(np.float32)
        raw = self.r_reps * self.n_buckets * self.d_proj
        if self.d_final is not None:
            self.sketch_target = rng.integers(0, self.d_final, raw).astype(np.int64)
            self.sketch_sign = (rng.integers(0, 2, raw) * 2 - 1).astype(np.float32)
        else:
            self.sketch_target = np.empty(0, np.int64)
            self.sketch_sign = np.empty(0, np.float32)
        self._transpose()

    def _transpose(self) -> None:
        # row-contiguous copies for the numba projection of small batches
        self._simhash_t = np.ascontiguousarray(self.simhash.T)
        self._projection_t = np.ascontiguousarray(self.projection.T) if self.projection.size else \
            np.empty((0, 0), np.float32)

    @property
    def n_buckets(self) -> int:
        return 1 << self.k_sim

    @property
    def dim_raw(self) -> int:
        """Dimensions before the optional final projection."""
        return self.r_reps * self.n_buckets * self.d_proj

    @property
    def dim_fde(self) -> int:
        return self.d_final if self.d_final is not None else self.dim_raw

    def __repr__(self) -> str:
        return (f"MuveraEncoder(dim={self.dim}, k_sim={self.k_sim}, d_proj={self.d_proj}, r_reps={self.r_reps}, "
                f"d_final={self.d_final}, fill_empty={self.fill_empty}, dim_fde={self.dim_fde})")

    # ---- encoding -------------------------------------------------------------------------------------------------
    def encode_queries(self, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """FDEs (n, dim_fde) float32 of n query sets: set i is ``rows[offsets[i]:offsets[i+1]]`` ((T, dim) float32
        or float16, offsets (n + 1,) int64; the caller validates them)."""
        return self._encode(rows, offsets, is_query=True)

    def encode_documents(self, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """FDEs (n, dim_fde) float32 of n document sets (bucket means, empty buckets filled)."""
        return self._encode(rows, offsets, is_query=False)

    def _project(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bucket ids (T, R) int64 and projected rows (T, R, d_proj) float32."""
        t = rows.shape[0]
        buckets = np.zeros((t, self.r_reps), np.int64)
        proj = np.empty((t, self.r_reps, self.d_proj), np.float32)
        if t <= _SMALL:
            K.project_rows(np.ascontiguousarray(rows, np.float32), self._simhash_t, self._projection_t, self.k_sim,
                           buckets, proj)
            return buckets, proj
        weights = (1 << np.arange(self.k_sim, dtype=np.int64))[::-1]
        for s in range(0, t, _CHUNK):
            x = np.asarray(rows[s:s + _CHUNK], np.float32)
            if self.k_sim:
                bits = (x @ self.simhash > 0).reshape(-1, self.r_reps, self.k_sim)
                buckets[s:s + x.shape[0]] = bits @ weights
            if self.projection.size:
                proj[s:s + x.shape[0]] = (x @ self.projection).reshape(-1, self.r_reps, self.d_proj)
            else:
                proj[s:s + x.shape[0]] = x[:, None, :]
        return buckets, proj

    def _encode(self, rows: np.ndarray, offsets: np.ndarray, is_query: bool) -> np.ndarray:
        n = offsets.shape[0] - 1
        out = np.empty((n, self.r_reps, self.n_buckets, self.d_proj), np.float32)
        if n == 0:
            return np.empty((0, self.dim_fde), np.float32)
        # sets are encoded in groups so the projected rows of only one group are in memory at a time
        set_start = 0
        while set_start < n:
            set_end = int(np.searchsorted(offsets, offsets[set_start] + _CHUNK, side="right")) - 1
            set_end = min(n, max(set_end, set_start + 1))
            a, b = int(offsets[set_start]), int(offsets[set_end])
            buckets, proj = self._project(rows[a:b])
            fde = K.fde_blocks_serial if b - a <= _SMALL else K.fde_blocks
            fde(proj, buckets, np.ascontiguousarray(offsets[set_start:set_end + 1] - a), self.n_buckets,
                not is_query, self.fill_empty and not is_query, out[set_start:set_end])
            set_start = set_end
        flat = out.reshape(n, self.dim_raw)
        if self.d_final is None:
            return flat
        final = np.empty((n, self.d_final), np.float32)
        K.count_sketch(flat, self.sketch_target, self.sketch_sign, final)
        return final

    # ---- persistence ---------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"dim": self.dim, "k_sim": self.k_sim, "d_proj": self.d_proj, "r_reps": self.r_reps,
                "d_final": self.d_final, "fill_empty": self.fill_empty, "seed": self.seed}
        arrays = {"simhash": self.simhash, "projection": self.projection, "sketch_target": self.sketch_target,
                  "sketch_sign": self.sketch_sign}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MuveraEncoder:
        try:
            enc = cls(int(meta["dim"]), k_sim=int(meta["k_sim"]), d_proj=int(meta["d_proj"]),
                      r_reps=int(meta["r_reps"]), d_final=None if meta["d_final"] is None else int(meta["d_final"]),
                      fill_empty=bool(meta["fill_empty"]), seed=int(meta["seed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"bad MUVERA encoder parameters ({exc!r})") from None
        for name in ("simhash", "projection", "sketch_target", "sketch_sign"):
            ref, arr = getattr(enc, name), arrays[name]
            if arr.shape != ref.shape or arr.dtype != ref.dtype:
                raise CorruptFileError(f"MUVERA array {name!r} has shape {arr.shape} {arr.dtype}, expected "
                                       f"{ref.shape} {ref.dtype}")
            setattr(enc, name, np.ascontiguousarray(arr))
        enc._transpose()
        if enc.sketch_target.size and (enc.sketch_target.min() < 0 or enc.sketch_target.max() >= enc.d_final):
            raise CorruptFileError("MUVERA count-sketch targets out of range")
        return enc
