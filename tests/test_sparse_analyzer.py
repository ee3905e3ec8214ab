"""The text analyzer: Unicode normalisation, lower-casing, tokens, stop words, stemming; the vocabulary."""

from __future__ import annotations

import sys

import pytest

from simdex.errors import InvalidInputError, InvalidTypeError
from simdex.sparse import ENGLISH_STOP_WORDS, Analyzer, SparseIndex, Vocabulary

from ._sparse_data import gcide

pytest.importorskip("Stemmer", reason="the analyzer's stemming tests need PyStemmer (simdex[text])")


def test_normalisation_folds_compatibility_characters():
    an = Analyzer(stemmer=None, stopwords=None)
    # ligature fi, full-width letters, superscript two, non-breaking space
    assert an("\ufb01nance \uff21\uff22\uff23 x\u00b2\u00a0yz") == ["finance", "abc", "x2", "yz"]
    raw = Analyzer(normalization=None, stemmer=None, stopwords=None)
    assert raw("\ufb01nance") == ["\ufb01nance"]
    # NFC and NFD spellings of the same word become the same term under NFKC
    assert an("caf\u00e9") == an("cafe\u0301") == ["caf\u00e9"]


def test_lowercase_and_casefold():
    assert Analyzer(stemmer=None, stopwords=None)("The QUICK Fox") == ["the", "quick", "fox"]
    assert Analyzer(stemmer=None, stopwords=None, lowercase=False)("The Fox") == ["The", "Fox"]
    assert Analyzer(stemmer=None, stopwords=None, casefold=True)("Stra\u00dfe") == ["strasse"]


def test_stop_words_and_token_pattern():
    an = Analyzer(stemmer=None)
    assert an("This is the end of a story, and it was not told") == ["end", "story", "told"]
    assert set(ENGLISH_STOP_WORDS) >= {"the", "and", "of", "a"} and len(ENGLISH_STOP_WORDS) == 33
    custom = Analyzer(stemmer=None, stopwords=["story"])
    assert custom("the story") == ["the"]
    # the default pattern keeps runs of >= 2 word characters
    assert Analyzer(stemmer=None, stopwords=None)("a b cd 3 45 x-ray") == ["cd", "45", "ray"]


def test_stemming_is_snowball_english():
    an = Analyzer()
    assert an("running connections generously happiness") == ["run", "connect", "generous", "happi"]
    import Stemmer
    words = [w for t in gcide(300) for w in Analyzer(stemmer=None)(t)]
    assert an.analyze_batch([" ".join(words)])[0] == Stemmer.Stemmer("english").stemWords(words)


def test_pystemmer_and_snowballstemmer_agree():
    snowball = pytest.importorskip("snowballstemmer")
    words = [w for t in gcide(200) for w in Analyzer(stemmer=None)(t)]
    import Stemmer
    assert Stemmer.Stemmer("english").stemWords(words) == snowball.stemmer("english").stemWords(words)


def test_real_text_and_batch_equals_single():
    texts = gcide(500)
    an = Analyzer()
    batch = an.analyze_batch(texts)
    assert batch == [Analyzer().analyze(t) for t in texts]
    # stop words go before stemming, as in Lucene, so only the unstemmed terms are free of them ("its" -> "it")
    for terms in Analyzer(stemmer=None).analyze_batch(texts):
        assert not set(terms) & ENGLISH_STOP_WORDS
    for terms in batch:
        assert all(t == t.lower() for t in terms)
    assert sum(map(len, batch)) > 10_000


def test_config_round_trip_and_repr():
    an = Analyzer(normalization="NFC", stopwords=["foo"], stemmer="english", min_length=2)
    again = Analyzer(**an.config())
    assert again.config() == an.config()
    assert again("foo running x") == an("foo running x") == ["run"]
    assert "english" in repr(an)


def test_bad_parameters():
    with pytest.raises(InvalidInputError, match="normalization"):
        Analyzer(normalization="NFX")
    with pytest.raises(InvalidInputError, match="stopwords"):
        Analyzer(stopwords="klingon")
    with pytest.raises(InvalidInputError, match="klingon"):
        Analyzer(stemmer="klingon")
    with pytest.raises(InvalidTypeError, match="text must be str"):
        Analyzer()(b"bytes")
    with pytest.raises(InvalidTypeError, match="not one string"):
        Analyzer().analyze_batch("one string")


def test_missing_stemmer_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "Stemmer", None)
    monkeypatch.setitem(sys.modules, "snowballstemmer", None)
    with pytest.raises(ImportError, match="PyStemmer"):
        Analyzer()
    assert Analyzer(stemmer=None)("running dogs") == ["running", "dogs"]


def test_vocabulary_document_frequencies():
    texts = gcide(300)
    index = SparseIndex()
    index.add(texts)
    tokens = Analyzer().analyze_batch(texts)
    vocab = index.vocabulary
    for term in ("noun", "verb", "plant", "act"):
        assert vocab.df[vocab.get(term)] == sum(term in set(t) for t in tokens)
    assert len(vocab) == len({t for ts in tokens for t in ts})
    arrays = vocab.to_arrays()
    again = Vocabulary.from_arrays(arrays["vocab_bytes"], arrays["vocab_offsets"], arrays["vocab_df"])
    assert again.terms == vocab.terms and (again.df == vocab.df).all()
