"""simdex.gpu: the exact GPU index against numpy brute force on real data. CI has no GPU: the torch path runs on
torch's CPU device, and the fused Triton kernel under the Triton interpreter (``TRITON_INTERPRET=1``) on small
slices (the interpreter takes about a second per search there). Where torch sees a GPU, every test also runs on
CUDA with the compiled kernel."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from simdex.errors import DimensionMismatchError, InvalidInputError, InvalidTypeError

from .conftest import _slice, numpy_knn

torch = pytest.importorskip("torch")  # CI has it (torch 2.14.1 and triton 3.8.0 come with the test extra)

from simdex.gpu import GPUFlatIndex  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETS = {"l2": "fashion-mnist-784", "cosine": "wordnet-minilm-384", "ip": "glove-50"}


def _data(metric: str, n: int, nq: int):
    ds = _slice(SETS[metric], n, nq)
    return ds.base, ds.queries


def _check(index, base, queries, k, metric, rounded=None):
    """ids equal to brute force over the stored (possibly rounded) vectors, distances within 1e-3 relative."""
    stored = base if rounded is None else base.astype(rounded).astype(np.float32)
    d_ref, i_ref = numpy_knn(stored, queries, k, metric)
    d, i = index.search(queries, k)
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == i.shape == (queries.shape[0], k)
    assert (i == i_ref).mean() >= 0.99  # (a tie broken the other way)
    np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(d_ref).max())))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_torch_path_equals_brute_force(metric, device):
    base, queries = _data(metric, 3000, 40)
    index = GPUFlatIndex(base.shape[1], metric, device=device, kernel="torch")
    assert index.info()["device"].startswith(device)
    ids = index.add(base)
    np.testing.assert_array_equal(ids, np.arange(3000))
    _check(index, base, queries, 10, metric)
    _check(index, base, queries, 100, metric)


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_storage_searches_the_rounded_vectors(device):
    base, queries = _data("cosine", 2000, 20)
    for dtype, rounded in (("float16", np.float16), ("bfloat16", None)):
        index = GPUFlatIndex(384, "cosine", dtype=dtype, device=device, kernel="torch")
        index.add(base)
        assert index.nbytes < 2000 * 384 * 3
        if rounded is not None:
            unit = base / np.linalg.norm(base, axis=1, keepdims=True)
            _check(index, unit, queries, 10, "cosine", rounded)
        else:  # bfloat16 (numpy has none): recall against the float32 truth
            _, truth = numpy_knn(base, queries, 10, "cosine")
            found = index.search(queries, 10)[1]
            assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]) >= 0.9


_KERNEL_RUN = """
import sys
import numpy as np
from simdex.gpu import GPUFlatIndex
folder, metric, k, dtype, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
base, queries = np.load(folder + "/base.npy"), np.load(folder + "/queries.npy")
import simdex.gpu.flat
simdex.gpu.flat._STREAM_TILE_BYTES = base.shape[1] * 4 * 48  # storage="host": tiles of 48 float32 rows
index = GPUFlatIndex(base.shape[1], metric, dtype=dtype, device=device, kernel="triton", storage=sys.argv[6])
index.add(base, ids=np.arange(base.shape[0]) * 7 + 3)
d, i = index.search(queries, k)
np.save(folder + "/d.npy", d)
np.save(folder + "/i.npy", i)
"""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric, k, dtype, storage", [("l2", 10, "float32", "device"),
                                                      ("cosine", 20, "float16", "device"),
                                                      ("l2", 10, "float16", "host")])
def test_fused_kernel_equals_brute_force(tmp_path, metric, k, dtype, storage, device):
    """The Triton kernel: several chunks of several tiles each, a dimension that is not a multiple of its
    block (glove's 50 as 64), k not a power of two, half-precision storage, and vectors kept in host memory and
    streamed to the device in tiles (the kernel's answers for each tile merged). On the CPU it runs in a process
    of its own started with ``TRITON_INTERPRET=1``: the interpreter must be chosen before triton is first
    imported."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    n = 160 if device == "cpu" else 20000
    base, queries = _data("ip" if metric == "l2" else metric, n, 3)  # glove-50 for l2: dimension 50
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "queries.npy", queries)
    env = {**os.environ, "TRITON_INTERPRET": "1" if device == "cpu" else "0"}
    done = subprocess.run([sys.executable, "-c", _KERNEL_RUN, str(tmp_path), metric, str(k), dtype, device,
                           storage], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    d, i = np.load(tmp_path / "d.npy"), np.load(tmp_path / "i.npy")
    unit = base / np.linalg.norm(base, axis=1, keepdims=True) if metric == "cosine" else base
    stored = base if dtype == "float32" else unit.astype(np.float16).astype(np.float32)
    d_ref, i_ref = numpy_knn(stored, queries, k, metric)
    assert (i == i_ref * 7 + 3).mean() >= 0.99
    np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(d_ref).max())))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_host_storage_streams_tiles_and_answers_as_brute_force(monkeypatch, tmp_path, metric, device):
    """storage="host": the vectors stay in host memory (the device holds norms and ids only) and each search
    brings them to the device a tile at a time (here tiles of 700 rows, adds checked 900 rows at a time, so a
    search crosses four tiles and an add four chunks); a bad row in a later chunk of an add leaves the index as it
    was; removal and a save loaded back on the device, or in host memory again, answer the same."""
    import simdex.gpu.flat as flat
    base, queries = _data(metric, 3000, 30)
    dim = base.shape[1]
    monkeypatch.setattr(flat, "_STREAM_TILE_BYTES", dim * 4 * 700)
    monkeypatch.setattr(flat, "_ADD_CHUNK_ROWS_BYTES", dim * 4 * 900)
    index = GPUFlatIndex(dim, metric, device=device, kernel="torch", storage="host")
    index.add(base)
    assert index.info()["storage"] == "host" and index._x.device.type == "cpu"
    assert index.nbytes <= 12 * 3000 * 1.5 < index.host_nbytes
    _check(index, base, queries, 10, metric)
    _check(index, base, queries, 100, metric)
    before = index.search(queries, 10)
    bad = base[:2000].copy()
    bad[1500, 3] = np.nan
    with pytest.raises(InvalidInputError, match=r"row 1500"):
        index.add(bad)
    assert len(index) == 3000
    np.testing.assert_array_equal(index.search(queries, 10)[1], before[1])
    assert index.remove(np.arange(0, 3000, 3)) == 1000
    kept = np.arange(3000)[np.arange(3000) % 3 != 0]
    d_ref, i_ref = numpy_knn(base[kept], queries, 10, metric)
    d, i = index.search(queries, 10)
    assert (i == kept[i_ref]).mean() >= 0.99
    index.save(tmp_path / "host.sdx")
    for storage in ("host", "device"):
        loaded = GPUFlatIndex.load(tmp_path / "host.sdx", device=device, storage=storage)
        assert loaded.storage == storage
        np.testing.assert_array_equal(loaded.search(queries, 10)[1], i)
    with pytest.raises(InvalidInputError, match="storage must be one of"):
        GPUFlatIndex(dim, metric, device=device, storage="disk")
    from simdex.gpu import GPUIVFIndex
    with pytest.raises(InvalidInputError, match="GPUIVFIndex keeps its lists in the device's memory"):
        GPUIVFIndex(dim, metric, device=device, storage="host")


def test_torch_tensors_in_and_out_and_bad_input():
    base, queries = _data("l2", 500, 5)
    index = GPUFlatIndex(784, "l2", device="auto", kernel="torch")
    assert index.info()["device_choice"].startswith("auto: ")
    index.add(torch.from_numpy(base).to(index.device))
    d, i = index.search(torch.from_numpy(queries).to(index.device), 5, output="torch")
    assert isinstance(d, torch.Tensor) and d.device == index.device and i.dtype == torch.int64
    np.testing.assert_array_equal(i.cpu().numpy(), numpy_knn(base, queries, 5, "l2")[1])
    n = len(index)
    with pytest.raises(DimensionMismatchError, match="dimension 783"):
        index.add(base[:, :783])
    with pytest.raises(InvalidInputError, match=r"NaN or inf \(row 1\)"):
        index.add(np.stack([base[0], np.full(784, np.nan, np.float32)]))
    with pytest.raises(InvalidTypeError, match="floats"):
        index.search(torch.zeros((1, 784), dtype=torch.int32, device=index.device), 5)
    with pytest.raises(InvalidInputError, match="device meta"):
        index.search(torch.zeros((1, 784), device="meta"), 5)
    with pytest.raises(InvalidInputError, match=f"larger than the index \\({n} vectors\\)"):
        index.search(queries, n + 1)
    with pytest.raises(InvalidInputError, match="dtype"):
        GPUFlatIndex(8, dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="no CUDA device"):
            GPUFlatIndex(8, device="cuda")
    assert len(index) == n
    np.testing.assert_array_equal(index.search(queries, 5)[1], i.cpu().numpy())


def test_gpu_bench_runs_on_the_device_it_finds(tmp_path):
    """`python -m simdex.bench gpu` (here on the CPU when there is no GPU): every point measured, the report
    written."""
    import json

    from simdex.bench import __main__ as bench_main
    assert bench_main.main(["gpu", "--n", "3000", "--dim", "32", "--batch", "8", "--k", "5", "--repeats", "1",
                            "--stream", "--stream-n", "2500", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    (point,) = report["points"]
    assert report["n"] == 3000 and point["k"] == 5 and point["batch_qps"] > 0 and point["single_bytes_per_s"] > 0
    streamed = report["streamed"]
    assert streamed["n"] == 2500 and [p["batch"] for p in streamed["points"]] == [1, 8]
    assert all(p["qps"] > 0 and p["share_of_copy"] > 0 for p in streamed["points"])
    assert report["command"].startswith("python -m simdex.bench gpu")


def _recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


@pytest.mark.parametrize("device", DEVICES)
def test_ivf_flat_lists_answer_as_the_cpu_ivf_with_the_same_centroids(device):
    """GPUIVFIndex over flat lists, given the centroids of a CPU IVFIndex, probes the same lists and returns the
    same neighbours; probing every list is exact."""
    from simdex.quant import IVFIndex
    from simdex.gpu import GPUIVFIndex
    base, queries = _data("l2", 4000, 30)
    cpu = IVFIndex(784, "l2", nlist=32, codec="flat", nprobe=4)
    cpu.add(base)
    gpu = GPUIVFIndex(784, "l2", nlist=32, codec="flat", nprobe=4, device=device, kernel="torch")
    gpu.train(base, centroids=cpu.centroids)
    gpu.add(base)
    d_cpu, i_cpu = cpu.search(queries, 10)
    d, i = gpu.search(queries, 10)
    assert (i == i_cpu).mean() >= 0.99
    np.testing.assert_allclose(d, d_cpu, rtol=1e-3)
    assert gpu.info()["nlist"] == 32 and len(gpu) == 4000
    d_all, i_all = gpu.search(queries, 10, nprobe=32)
    d_ref, i_ref = numpy_knn(base, queries, 10, "l2")
    assert (i_all == i_ref).mean() >= 0.99


@pytest.mark.parametrize("device", DEVICES)
def test_ivf_pq_lists_trained_on_the_device_reach_the_cpu_recall(device):
    from simdex.quant import IVFIndex
    from simdex.gpu import GPUIVFIndex
    base, queries = _data("ip", 4000, 50)  # glove-50, searched by L2 here
    _, truth = numpy_knn(base, queries, 10, "l2")
    cpu = IVFIndex(50, "l2", nlist=32, codec="pq10", nprobe=8)
    cpu.add(base)
    gpu = GPUIVFIndex(50, "l2", nlist=32, codec="pq10", nprobe=8, device=device, kernel="torch")
    gpu.train(base, iters=10)
    gpu.add(base)
    r_cpu, r_gpu = _recall(cpu.search(queries, 10)[1], truth), _recall(gpu.search(queries, 10)[1], truth)
    assert r_gpu >= r_cpu - 0.05, (r_gpu, r_cpu)
    reranked = GPUIVFIndex(50, "l2", nlist=32, codec="pq10", nprobe=8, rerank=50, device=device, kernel="torch")
    reranked.train(base, centroids=gpu.centroids.cpu().numpy(), iters=10)
    reranked.add(base)
    d, i = reranked.search(queries, 10)
    exact_lists = GPUIVFIndex(50, "l2", nlist=32, codec="flat", nprobe=8, device=device, kernel="torch")
    exact_lists.train(base, centroids=gpu.centroids.cpu().numpy())
    exact_lists.add(base)
    # re-ranking 50 code candidates comes close to scanning the same lists exactly
    r_exact = _recall(exact_lists.search(queries, 10)[1], truth)
    assert r_gpu < _recall(i, truth) and _recall(i, truth) >= r_exact - 0.05, (_recall(i, truth), r_exact)
    assert reranked.nbytes > gpu.nbytes  # (the float rows kept for re-ranking)
    with pytest.raises(InvalidInputError, match="not divisible"):
        GPUIVFIndex(50, codec="pq8", device=device)
    with pytest.raises(InvalidInputError, match="rerank applies to PQ"):
        GPUIVFIndex(50, codec="flat", rerank=10, device=device)


def test_cpu_ivf_trains_with_a_torch_device():
    """``IVFIndex(train_device=...)``: the coarse and PQ k-means on a torch device (the CPU's here), to a recall
    no worse than the numpy training's; a CUDA device that is not there is named."""
    from simdex.quant import IVFIndex
    base, queries = _data("ip", 4000, 50)
    _, truth = numpy_knn(base, queries, 10, "l2")
    plain = IVFIndex(50, "l2", nlist=32, codec="pq10", nprobe=8)
    plain.add(base)
    on_torch = IVFIndex(50, "l2", nlist=32, codec="pq10", nprobe=8, train_device="cpu")
    on_torch.add(base)
    assert _recall(on_torch.search(queries, 10)[1], truth) >= _recall(plain.search(queries, 10)[1], truth) - 0.05
    assert not np.array_equal(on_torch.centroids, plain.centroids)  # (another k-means ran)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="no CUDA device"):
            IVFIndex(50, "l2", nlist=8, codec="pq10", train_device="cuda").add(base[:1000])


_IVF_KERNEL_RUN = """
import sys
import numpy as np
from simdex.gpu import GPUIVFIndex
folder, device = sys.argv[1], sys.argv[2]
base, queries = np.load(folder + "/base.npy"), np.load(folder + "/queries.npy")
out = {}
for metric in ("l2", "cosine"):
    for codec, rerank in (("flat", 0), ("pq10", 0), ("pq10", 20)):
        index = GPUIVFIndex(50, metric, nlist=8, codec=codec, nprobe=3, rerank=rerank, device=device,
                            kernel="torch")
        index.add(base)
        for kernel in ("torch", "triton"):
            index.kernel = kernel
            d, i = index.search(queries, 10)
            np.save(f"{folder}/{metric}-{codec}-{rerank}-{kernel}-d.npy", d)
            np.save(f"{folder}/{metric}-{codec}-{rerank}-{kernel}-i.npy", i)
"""


@pytest.mark.parametrize("device", DEVICES)
def test_ivf_list_scan_kernel_equals_the_torch_path(tmp_path, device):
    """The fused list-scan kernel returns what the torch path does, for flat and PQ lists, L2 and cosine, with
    and without re-ranking (on the CPU under the Triton interpreter, in a process of its own)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    base, queries = _data("ip", 300 if device == "cpu" else 20000, 3)
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "queries.npy", queries)
    env = {**os.environ, "TRITON_INTERPRET": "1" if device == "cpu" else "0"}
    done = subprocess.run([sys.executable, "-c", _IVF_KERNEL_RUN, str(tmp_path), device], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("l2-flat-0", "l2-pq10-0", "l2-pq10-20", "cosine-flat-0", "cosine-pq10-0", "cosine-pq10-20"):
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}-triton-i.npy"),
                                      np.load(tmp_path / f"{name}-torch-i.npy"), err_msg=name)
        np.testing.assert_allclose(np.load(tmp_path / f"{name}-triton-d.npy"),
                                   np.load(tmp_path / f"{name}-torch-d.npy"), rtol=1e-4, atol=1e-4, err_msg=name)


def test_gpu_ivf_bench_on_a_small_synthetic_set():
    from simdex.bench import gpu as gpu_bench
    report = gpu_bench.run_ivf(n=3000, dim=16, nlist=8, codec="pq4", rerank=16, nprobes=(2, 8), batch=16, repeats=1,
                               device="cpu", cpu_build_rows=3000)
    assert [p["nprobe"] for p in report["points"]] == [2, 8]
    assert report["points"][1]["recall"] >= report["points"][0]["recall"] and report["points"][1]["recall"] > 0.7
    assert report["gpu_build_s"] > 0 and report["cpu_build_s"] > 0 and report["exact_qps"] > 0
    assert "| 8 |" in gpu_bench.format_ivf_report(report)


def test_the_kernels_compile_for_an_h100_without_one():
    """Both Triton kernels go through Triton's whole compiler to an sm_90 cubin (H100) on this machine, which has
    no GPU: what the interpreter does not check (the kernels' globals, types and shapes as the compiler takes
    them)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from simdex.gpu._kernels import NO_KEY, _build
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("this triton has no NVIDIA backend")
    scan, list_scan = _build(False)
    i32 = "i32"
    scan_sig = {"Q": "*fp16", "X": "*fp16", "XN": "*fp32", "PART": "*i64", "nq": i32, "n": i32, "dim": i32,
                "rows_per_chunk": i32, "n_chunks": i32, "stride_q": i32, "stride_x": i32}
    scan_const = {"IS_L2": True, "K": 16, "BLOCK_Q": 16, "BLOCK_D": 64, "IEEE": False, "EMPTY": NO_KEY}
    list_sig = {"Q": "*fp32", "LUT": "*fp32", "TAB": "*fp32", "CODES": "*u8", "VECS": "*fp32", "XN": "*fp32",
                "OFFSETS": "*i64", "PROBES": "*i64", "PROBE_D": "*fp32", "PART": "*i64", "nprobe": i32, "dim": i32,
                "m": i32}
    for fn, sig, const in ((scan, scan_sig, scan_const),
                           (list_scan, list_sig, {"IS_PQ": True, "IS_L2": True, "K": 16, "BLOCK_M": 16,
                                                  "BLOCK_D": 64, "EMPTY": NO_KEY}),
                           (list_scan, list_sig, {"IS_PQ": False, "IS_L2": False, "K": 32, "BLOCK_M": 16,
                                                  "BLOCK_D": 64, "EMPTY": NO_KEY})):
        sig = {**sig, **{name: "constexpr" for name in const}}
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                  target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], fn


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-pq"])
def test_a_device_out_of_memory_is_named_and_leaves_the_index_as_it_was(monkeypatch, kind):
    """The device running out of memory in the middle of an add (simulated: the third tensor allocation fails;
    the flat index grows into new tensors, the lists by concatenation) raises DeviceMemoryError naming the bytes
    and the device; the index answers as before."""
    from simdex.errors import DeviceMemoryError
    from simdex.gpu import GPUIVFIndex
    base, queries = _data("ip", 2000, 5)
    index = GPUFlatIndex(50, "l2", device="cpu", kernel="torch") if kind == "flat" else \
        GPUIVFIndex(50, "l2", nlist=16, codec="flat" if kind == "ivf-flat" else "pq10", nprobe=16, device="cpu",
                    kernel="torch")
    index.add(base[:1500])
    before = index.search(queries, 10)
    allocation = "empty" if kind == "flat" else "cat"
    real, calls = getattr(torch, allocation), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, allocation, failing)
    with pytest.raises(DeviceMemoryError, match=r"adding 500 vectors needs about [\d,.]+ MiB of cpu's memory"):
        index.add(base[1500:])
    monkeypatch.setattr(torch, allocation, real)
    assert len(calls) == 3
    assert len(index) == 1500
    after = index.search(queries, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    index.add(base[1500:])
    assert len(index) == 2000


def test_remove_drops_vectors_and_refuses_unknown_ids():
    base, queries = _data("cosine", 1000, 10)
    index = GPUFlatIndex(384, "cosine", device="cpu", kernel="torch")
    index.add(base, np.arange(1000) * 3)
    from simdex.errors import UnknownIdError
    with pytest.raises(UnknownIdError, match="1 unknown"):
        index.remove([0, 3, 4])
    assert len(index) == 1000
    assert index.remove(np.arange(0, 1500, 3)) == 500
    keep = np.arange(500, 1000)
    d_ref, i_ref = numpy_knn(base[keep], queries, 10, "cosine")
    d, i = index.search(queries, 10)
    assert (i == keep[i_ref] * 3).mean() >= 0.99
    np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pq", "ivf-pq-rerank"])
def test_ivf_remove_closes_up_the_lists(tmp_path, kind):
    """Removed vectors leave their lists: never returned again, the others answer exactly as before the removal
    (flat lists and PQ codes score the same entries the same way), unknown ids are refused with nothing removed,
    and adds and a save after a removal work."""
    from simdex.errors import UnknownIdError
    from simdex.gpu import GPUIVFIndex
    base, queries = _data("ip", 2000, 20)
    index = GPUIVFIndex(50, "l2", nlist=16, codec="flat" if kind == "ivf-flat" else "pq10", nprobe=16,
                        rerank=32 if kind.endswith("rerank") else 0, device="cpu", kernel="torch")
    ids = np.arange(2000) * 7
    index.add(base[:1900], ids[:1900])
    before_d, before_i = index.search(queries, 60)
    with pytest.raises(UnknownIdError, match="1 unknown"):
        index.remove([0, 7, 8])
    assert len(index) == 1900
    gone = np.union1d(before_i[:, :3].ravel(), ids[:1900:5])
    assert index.remove(gone) == gone.shape[0] and len(index) == 1900 - gone.shape[0]
    after_d, after_i = index.search(queries, 10)
    assert not np.isin(after_i, gone).any()
    survivors = ~np.isin(ids[:1900], gone)
    if kind.endswith("rerank"):  # re-ranked from float32: against brute force over the rows that stay
        _, truth = numpy_knn(base[:1900][survivors], queries, 10, "l2")
        assert _recall(after_i, ids[:1900][survivors][truth]) >= 0.8
    else:
        for row_d, row_i, got_d, got_i in zip(before_d, before_i, after_d, after_i):
            stay = ~np.isin(row_i, gone)
            assert (got_i == row_i[stay][:10]).mean() >= 0.9  # (ties may swap)
            np.testing.assert_allclose(got_d, row_d[stay][:10], rtol=1e-5, atol=1e-5)
    index.add(base[1900:], ids[1900:])
    assert len(index) == 2000 - gone.shape[0]
    if kind == "ivf-flat":  # a new row is its own nearest neighbour
        assert (index.search(base[1900:1950], 1)[1][:, 0] == ids[1900:1950]).mean() >= 0.95
    index.save(tmp_path / "index.sdx")
    loaded = GPUIVFIndex.load(tmp_path / "index.sdx", device="cpu")
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def _flat_pair(db, ids, x, metas, **device):
    gpu = db.create_collection("gpu", 384, index="flat", **device)
    cpu = db.create_collection("cpu", 384, index="flat")
    for col in (gpu, cpu):
        col.upsert(ids, x, metas)
    return gpu, cpu


def _same(a, b):
    """The same hits (ids, to a tie broken the other way) and distances to float32 rounding."""
    pairs = [(h, g) for ra, rb in zip(a, b) for h, g in zip(ra, rb)]
    assert len(pairs) == sum(len(r) for r in b) and sum(h["id"] == g["id"] for h, g in pairs) >= 0.99 * len(pairs)
    np.testing.assert_allclose([h["distance"] for h, _ in pairs], [g["distance"] for _, g in pairs], atol=1e-5)


def test_a_flat_collection_on_a_device_answers_as_on_the_cpu_and_follows_writes(tmp_path, monkeypatch):
    """A flat collection with device="auto" mirrors its rows on the device (CUDA where torch sees one; here also
    torch's CPU device, the same code) and answers plain searches there: the hits of the CPU collection, after
    upserts, replacements and deletes, and after reopening. A filtered search, and every search once the device
    fails, goes to the CPU index; a write never fails because of the device."""
    import simdex
    from simdex.gpu import flat as gpu_flat
    from simdex.store import device as store_device
    monkeypatch.setattr(store_device, "MIRROR_DEVICE_TYPES", ("cuda", "cpu"))
    base, queries = _data("cosine", 3000, 20)
    ids = [f"r{i}" for i in range(3000)]
    metas = [{"half": i % 2} for i in range(3000)]
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        gpu, cpu = _flat_pair(db, ids, base, metas, device="auto")
        assert gpu.stats()["device"]["index"] == "FlatIndex"  # built on the first search
        _same(gpu.search_batch(queries, 10, include=["distances"]), cpu.search_batch(queries, 10, include=["distances"]))
        info = gpu.stats()["device"]
        assert info["index"] == "GPUFlatIndex" and info["device_bytes"] >= 3000 * 384 * 4
        for col in (gpu, cpu):
            col.delete(ids[:1000])
            col.upsert(ids[2000:2200], base[:200], metas[:200])  # replaced: new vectors
            col.upsert([f"n{i}" for i in range(50)], base[2500:2550])
        assert len(gpu._vectors.mirror.index) == cpu.count() == 2050
        _same(gpu.search_batch(queries, 10, include=["distances"]), cpu.search_batch(queries, 10, include=["distances"]))
        where = {"half": 1}
        _same(gpu.search_batch(queries, 5, where=where, include=["distances"]),
              cpu.search_batch(queries, 5, where=where, include=["distances"]))
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        gpu, cpu = db.get_collection("gpu"), db.get_collection("cpu")
        _same(gpu.search_batch(queries, 10, include=["distances"]), cpu.search_batch(queries, 10, include=["distances"]))
        assert gpu.stats()["device"]["index"] == "GPUFlatIndex"

        def out_of_memory(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        monkeypatch.setattr(gpu_flat.GPUFlatIndex, "add", out_of_memory)
        for col in (gpu, cpu):
            col.upsert(ids[:100], base[:100], metas[:100])  # durable although the mirror could not take it
        assert gpu.count() == cpu.count() == 2150
        info = gpu.stats()["device"]
        assert info["index"] == "FlatIndex" and "out of memory" in info["note"]
        _same(gpu.search_batch(queries, 10, include=["distances"]), cpu.search_batch(queries, 10, include=["distances"]))


def test_an_ivf_pq_collection_on_a_device_searches_its_own_lists_and_follows_writes(tmp_path, monkeypatch):
    """An ivf-pq collection with device="auto" (torch's CPU device standing in for CUDA, the same code): below the
    rows its lists need, searches stay on the CPU and say why; then a GPUIVFIndex trained on the collection's rows
    answers plain searches, probing ``ef`` lists (recall at one list below recall at all of them, which reaches
    brute force's); it is retrained once the collection has grown four times; deleted records never come back,
    new ones are found, a ``where`` goes to the CPU index; after reopening it is built again. Bad device
    parameters are refused."""
    import simdex
    from simdex.store import device as store_device
    monkeypatch.setattr(store_device, "MIRROR_DEVICE_TYPES", ("cuda", "cpu"))
    base, queries = _data("cosine", 3000, 30)
    ids = [f"r{i}" for i in range(3000)]
    metas = [{"half": i % 2} for i in range(3000)]
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)

    def recall(col, ef, alive=None):
        hits = col.search_batch(queries, 10, ef=ef, include=["distances"])
        keep = np.arange(3000) if alive is None else alive
        _, truth = numpy_knn(unit[keep], queries, 10, "cosine")
        return np.mean([len({ids[keep[t]] for t in row} & {h["id"] for h in got}) / 10
                        for row, got in zip(truth, hits)])

    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        col = db.create_collection("g", 384, index="ivf-pq", device="auto", codec="pq16")  # (16 k-means, not 48)
        col.upsert(ids[:100], base[:100], metas[:100])
        assert len(col.search(queries[0], 5)) == 5
        info = col.stats()["device"]
        assert info["index"] == "IVFIndex" and "until the collection has 256 rows" in info["note"]
        col.upsert(ids[100:700], base[100:700], metas[100:700])
        col.merge()
        col.search(queries[0], 5)
        mirror = col._vectors.mirror
        assert col.stats()["device"]["index"] == "GPUIVFIndex" and mirror._built_rows == 700
        col.upsert(ids[700:], base[700:], metas[700:])  # past four times the rows it was trained on
        col.merge()
        nlist = mirror.index.nlist
        assert recall(col, 10_000) >= 0.95
        assert mirror._built_rows == 3000 and mirror.index.nlist > nlist  # retrained, lists sized anew
        assert recall(col, 1) < recall(col, 10_000) - 0.1
        col.delete(ids[:1000])
        col.upsert(["new"], base[2999:3000] * 2.0)
        assert len(mirror.index) == 2001 == col.count()
        assert recall(col, 10_000, np.arange(1000, 3000)) >= 0.95
        assert [h["id"] for h in col.search(base[2999], 2, ef=10_000)] in (["r2999", "new"], ["new", "r2999"])
        hits = col.search_batch(queries, 5, where={"half": 1}, include=["metadatas"])
        assert all(h["metadata"]["half"] == 1 for row in hits for h in row)
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        col = db.get_collection("g")
        assert recall(col, 10_000, np.arange(1000, 3000)) >= 0.95
        assert col.stats()["device"]["index"] == "GPUIVFIndex"
        with pytest.raises(InvalidInputError, match="device applies to flat and ivf-pq collections"):
            db.create_collection("h", 384, index="hnsw", device="auto")
        with pytest.raises(InvalidInputError, match="codec 'pq' or 'pq<m>' with m dividing its dimension 384"):
            db.create_collection("h", 384, index="ivf-pq", device="auto", codec="pq7")
        assert "h" not in db.list_collections()


def test_device_cuda_falls_back_to_the_cpu_and_says_why(tmp_path):
    import simdex
    base, queries = _data("cosine", 500, 5)
    ids = [f"r{i}" for i in range(500)]
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        gpu, cpu = _flat_pair(db, ids, base, None, device="cuda")
        _same(gpu.search_batch(queries, 10, include=["distances"]), cpu.search_batch(queries, 10, include=["distances"]))
        info = gpu.stats()["device"]
        if torch.cuda.is_available():
            assert info["index"] == "GPUFlatIndex" and info["searches_on"].startswith("cuda")
        else:
            assert info["index"] == "FlatIndex" and "torch sees no CUDA device" in info["note"]
        with pytest.raises(InvalidInputError, match="device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got 'tpu'"):
            db.create_collection("bad", 384, index="flat", device="tpu")
        with pytest.raises(InvalidInputError, match="device applies to flat and ivf-pq collections"):
            db.create_collection("bad", 384, index="hnsw", device="cuda")
        assert sorted(db.list_collections()) == ["cpu", "gpu"]


def test_gpu_ivf_bench_on_fashion_mnist_carried_as_uint8(tmp_path):
    """Fashion-MNIST packed as uint8 (what a GPU machine without the data sets is sent) holds the same pixels,
    and the IVF-PQ bench on it finds the exact neighbours' share that its nprobe allows."""
    from simdex import datasets
    from simdex.bench import gpu as gpu_bench
    pack = gpu_bench.pack_fashion_mnist(tmp_path / "fmnist.npz", n_base=4000, n_queries=64)
    with np.load(pack, allow_pickle=False) as packed:
        assert packed["base"].dtype == np.uint8
        np.testing.assert_array_equal(packed["base"], datasets.load("fashion-mnist-784").base[:4000])
    report = gpu_bench.run_ivf_fashion_mnist(pack, nlist=32, codec="pq56", rerank=32, nprobes=(1, 8), batch=64,
                                             repeats=1, device="cpu")
    assert report["n"] == 4000 and report["dim"] == 784 and report["nlist"] == 32
    low, high = report["points"]
    assert high["recall"] > 0.9 and high["recall"] >= low["recall"]
    assert "fashion-mnist-784 (uint8)" in gpu_bench.format_ivf_report(report)


@pytest.mark.parametrize("kind", ["flat-float32", "flat-float16", "flat-bfloat16", "ivf-flat", "ivf-pq",
                                  "ivf-pq-rerank"])
def test_save_and_load_answer_as_before(tmp_path, kind):
    """An index saved and loaded (on torch's CPU device here; a file saved on a GPU loads anywhere) answers every
    query as before; a file of another kind, or one whose lists do not match its vectors, is refused."""
    from simdex.errors import CorruptFileError
    from simdex.fileformat import load_arrays, save_arrays
    from simdex.gpu import GPUIVFIndex
    base, queries = _data("l2", 2000, 20)
    if kind.startswith("flat"):
        index = GPUFlatIndex(784, "l2", dtype=kind.split("-")[1], device="cpu", kernel="torch")
    else:
        index = GPUIVFIndex(784, "l2", nlist=16, codec="flat" if kind == "ivf-flat" else "pq56", nprobe=4,
                            rerank=32 if kind.endswith("rerank") else 0, device="cpu", kernel="torch")
    index.add(base, np.arange(2000) * 7)
    before = index.search(queries, 10)
    index.save(tmp_path / "index.sdx")
    loaded = type(index).load(tmp_path / "index.sdx", device="cpu")
    assert len(loaded) == 2000 and loaded.info() == index.info()
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    other = GPUFlatIndex if kind.startswith("ivf") else GPUIVFIndex
    with pytest.raises(CorruptFileError, match="not a"):
        other.load(tmp_path / "index.sdx", device="cpu")
    _, meta, arrays = load_arrays(tmp_path / "index.sdx", mmap=False)
    save_arrays(tmp_path / "bad.sdx", type(index).__name__, {**meta, "count": 1999},
                {**arrays, "_ids": arrays["_ids"][:1999]})
    with pytest.raises(CorruptFileError):
        type(index).load(tmp_path / "bad.sdx", device="cpu")


def test_adds_one_at_a_time_grow_into_spare_rows():
    """Many small adds (a collection's mirror takes one write at a time) grow the flat index's tensors a bounded
    number of times, and it answers as one add of every row."""
    base, queries = _data("l2", 1000, 10)
    index = GPUFlatIndex(784, "l2", device="cpu", kernel="torch")
    storages = set()
    for start in range(0, 1000, 10):
        index.add(base[start:start + 10], np.arange(start, start + 10))
        storages.add(index._x.data_ptr())
    assert len(index) == 1000 and len(storages) <= 12 and index._x.shape[0] >= 1000
    _check(index, base, queries, 10, "l2")
    index.remove(np.arange(0, 1000, 2))
    index.add(base[:1], [5000])
    d, i = index.search(queries, 5)
    keep = np.r_[np.arange(1, 1000, 2), 0]
    _, i_ref = numpy_knn(base[keep], queries, 5, "l2")
    assert (i == np.where(keep[i_ref] == 0, 5000, keep[i_ref])).mean() >= 0.99
