"""Text analysis: Unicode normalisation, lower-casing, tokenisation, stop words and stemming, plus a vocabulary.

The analyzer is plain Python around C-implemented pieces (``unicodedata``, ``re``, PyStemmer when installed), with a
word -> term cache so that each distinct word is normalised, filtered and stemmed once per analyzer.

Stemming needs a Snowball stemmer: PyStemmer (the ``text`` extra, fast C) or, failing that, the pure-Python
``snowballstemmer`` package (the same algorithms and output). With neither installed, asking for stemming raises
an :class:`ImportError` that says what to install; ``stemmer=None`` needs nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError

# Lucene's classic English stop set (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET); bm25s uses the same 33 words.
ENGLISH_STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
    "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
    "will", "with"))

# scikit-learn's and bm25s's default: runs of two or more word characters
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD", None)
_CACHE_LIMIT = 2_000_000


def _make_stemmer(language: str) -> Any:
    """A ``stemWords(list[str]) -> list[str]`` object for ``language``: PyStemmer, else snowballstemmer."""
    try:
        import Stemmer  # PyStemmer
        return Stemmer.Stemmer(language)
    except ImportError:
        pass
    except KeyError as exc:
        raise InvalidInputError(f"no Snowball stemmer for language {language!r}") from exc
    try:
        import snowballstemmer
    except ImportError:
        raise ImportError("stemming needs PyStemmer (pip install 'simdex[text]') or snowballstemmer; "
                          "or create the Analyzer with stemmer=None") from None
    try:
        return snowballstemmer.stemmer(language)
    except KeyError as exc:
        raise InvalidInputError(f"no Snowball stemmer for language {language!r}") from exc


class Analyzer:
    """Turns text into lists of terms.

    Parameters: ``normalization`` (a Unicode normal form or None; NFKC folds compatibility characters such as
    ligatures and full-width letters), ``lowercase`` (Unicode case folding with ``str.casefold`` when
    ``casefold=True``, else ``str.lower``), ``token_pattern`` (a regular expression whose matches are the tokens),
    ``stopwords`` (``"english"``, an iterable of words, or None; matched after lower-casing, before stemming),
    ``stemmer`` (a Snowball language name such as ``"english"``, or None), ``min_length``/``max_length`` (token
    length bounds in characters, before stemming).
    """

    def __init__(self, *, normalization: str | None = "NFKC", lowercase: bool = True, casefold: bool = False,
                 token_pattern: str = DEFAULT_TOKEN_PATTERN, stopwords: str | Iterable[str] | None = "english",
                 stemmer: str | None = "english", min_length: int = 1, max_length: int = 64) -> None:
        if normalization not in NORMALIZATIONS:
            raise InvalidInputError(f"normalization must be one of {NORMALIZATIONS}; got {normalization!r}")
        if isinstance(stopwords, str):
            if stopwords.lower() not in ("english", "en"):
                raise InvalidInputError(f"stopwords must be 'english', an iterable of words or None; "
                                        f"got {stopwords!r}")
            stop = ENGLISH_STOP_WORDS
        elif stopwords is None:
            stop = frozenset()
        else:
            stop = frozenset(str(w) for w in stopwords)
        if not isinstance(token_pattern, str):
            raise InvalidTypeError("token_pattern must be a string")
        self.normalization = normalization
        self.lowercase = bool(lowercase)
        self.casefold = bool(casefold)
        self.token_pattern = token_pattern
        self.stopwords = stop
        self.stemmer_language = stemmer
        self.min_length = int(min_length)
        self.max_length = int(max_length)
        self._regex = re.compile(token_pattern)
        self._stemmer = _make_stemmer(stemmer) if stemmer else None
        self._cache: dict[str, str | None] = {}

    def config(self) -> dict[str, Any]:
        """JSON-serialisable parameters; ``Analyzer(**config)`` rebuilds an equal analyzer."""
        return {"normalization": self.normalization, "lowercase": self.lowercase, "casefold": self.casefold,
                "token_pattern": self.token_pattern, "stopwords": sorted(self.stopwords),
                "stemmer": self.stemmer_language, "min_length": self.min_length, "max_length": self.max_length}

    def __repr__(self) -> str:
        return (f"Analyzer(normalization={self.normalization!r}, lowercase={self.lowercase}, "
                f"stopwords={len(self.stopwords)} words, stemmer={self.stemmer_language!r})")

    def _prepare(self, text: Any) -> str:
        if not isinstance(text, str):
            raise InvalidTypeError(f"text must be str; got {type(text).__name__}")
        if self.normalization is not None and not text.isascii():
            text = unicodedata.normalize(self.normalization, text)
        if self.casefold:
            text = text.casefold()
        elif self.lowercase:
            text = text.lower()
        return text

    def _terms_of_words(self, words: list[str]) -> None:
        """Fill the cache for ``words`` not seen before (one batched stemmer call)."""
        new = [w for w in dict.fromkeys(words) if w not in self._cache]
        if not new:
            return
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        keep = [w for w in new if w not in self.stopwords and self.min_length <= len(w) <= self.max_length]
        for w in new:
            self._cache[w] = None
        stems = self._stemmer.stemWords(keep) if self._stemmer is not None else keep
        for w, s in zip(keep, stems):
            self._cache[w] = s

    def analyze(self, text: str) -> list[str]:
        """The terms of one text, in order (stop words removed, stemmed)."""
        return self.analyze_batch([text])[0]

    __call__ = analyze

    def analyze_batch(self, texts: Iterable[str]) -> list[list[str]]:
        """:meth:`analyze` for many texts; faster, because the stemmer is called once per batch."""
        if isinstance(texts, str):
            raise InvalidTypeError("analyze_batch takes an iterable of strings, not one string")
        findall = self._regex.findall
        words = [findall(self._prepare(t)) for t in texts]
        cache = self._cache
        flat = [w for ws in words for w in ws if w not in cache]
        if flat:
            self._terms_of_words(flat)
        out = []
        for ws in words:
            terms = [cache[w] for w in ws]
            out.append([t for t in terms if t is not None])
        return out


class Vocabulary:
    """Term <-> term id, with document frequencies. Ids are dense, in order of first appearance."""

    def __init__(self, terms: Iterable[str] = ()) -> None:
        self._ids: dict[str, int] = {}
        self.terms: list[str] = []
        for t in terms:
            self.add(t)
        self.df = np.zeros(len(self.terms), np.int64)

    def __len__(self) -> int:
        return len(self.terms)

    def __contains__(self, term: str) -> bool:
        return term in self._ids

    def add(self, term: str) -> int:
        tid = self._ids.get(term)
        if tid is None:
            tid = len(self.terms)
            self._ids[term] = tid
            self.terms.append(term)
        return tid

    def get(self, term: str, default: int = -1) -> int:
        return self._ids.get(term, default)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The terms as UTF-8 bytes + offsets (the file format stores no strings)."""
        raw = [t.encode("utf-8") for t in self.terms]
        offsets = np.zeros(len(raw) + 1, np.int64)
        if raw:
            offsets[1:] = np.cumsum([len(r) for r in raw])
        blob = np.frombuffer(b"".join(raw), np.uint8) if raw else np.zeros(0, np.uint8)
        return {"vocab_bytes": blob.copy(), "vocab_offsets": offsets, "vocab_df": self.df.copy()}

    @classmethod
    def from_arrays(cls, blob: np.ndarray, offsets: np.ndarray, df: np.ndarray) -> Vocabulary:
        data = bytes(np.asarray(blob, np.uint8))
        off = np.asarray(offsets, np.int64).tolist()
        terms = [data[off[i]:off[i + 1]].decode("utf-8") for i in range(len(off) - 1)]
        vocab = cls(terms)
        if len(vocab) != len(terms):
            raise ValueError("vocabulary holds duplicate terms")
        vocab.df = np.array(df, np.int64)
        if vocab.df.shape != (len(terms),):
            raise ValueError("vocabulary df does not match its terms")
        return vocab
