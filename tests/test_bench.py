"""The benchmark harness runs end to end on a small slice, with real peers, and reports what it promises."""

from __future__ import annotations

import importlib.util

import json
import subprocess
import sys

import numpy as np
import pytest

from simdex.bench import ann
from simdex.bench.peers import ADAPTERS


def test_ann_harness_small(tmp_path):
    report = ann.run("fashion-mnist-784", ["simdex", "faiss", "usearch"], M=8, ef_construction=40,
                     efs=(10, 20, 40, 80), n_base=3000, n_queries=100, repeats=1, threads=2, log=lambda *_: None)
    libs = [r["library"] for r in report["results"]]
    assert libs == ["simdex", "faiss", "usearch"]
    for r in report["results"]:
        assert r["build_seconds"] > 0 and r["size_bytes"] > 3000 * 784 * 4
        recalls = [p["recall"] for p in r["points"]]
        assert recalls[-1] >= 0.9, f"{r['library']} never reached recall 0.9 on an easy slice"
        assert all(p["qps_1thread"] > 0 and p["qps_all"] > 0 for p in r["points"])
    ratio = report["ratios"]["qps@0.95_1thread"]
    assert ratio["best_peer"] in ("faiss", "usearch") and ratio["ratio"] > 0
    assert report["ratios"]["build_time"]["ratio"] > 0
    text = ann.format_report(report)
    assert "simdex" in text and "ratio qps@0.95_1thread" in text
    json_path, png_path = ann.save(report, tmp_path)
    assert json.loads(json_path.read_text())["dataset"] == "fashion-mnist-784"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adapters_agree_on_easy_queries(fashion_small):
    """Every adapter finds a base vector itself when queried with it (cosine and l2)."""
    for metric in ("l2", "cosine"):
        for name in ("simdex", "faiss", "usearch"):
            a = ADAPTERS[name](metric, 8, 40)
            a.build(fashion_small.base[:1000] + 1.0, 1)
            ids = a.search(fashion_small.base[:20] + 1.0, 1, 32, 1)
            assert (np.asarray(ids)[:, 0] == np.arange(20)).mean() >= 0.9, (name, metric)


def test_bench_cli_help_and_unknown_library():
    out = subprocess.run([sys.executable, "-m", "simdex.bench", "ann", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--dataset" in out.stdout
    out = subprocess.run([sys.executable, "-m", "simdex.bench", "ann", "--libs", "simdex,nope", "--n-base", "100"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "unknown library 'nope'" in out.stderr


def test_startup_measurement():
    # what the report says, not how fast: the cold process compiled kernels, the warm one (same cache) none; a
    # wall-clock ordering of two processes on a shared machine is not a test
    from simdex.bench.startup import format_startup, measure
    result = measure(("cli-search",), ("cold", "warm"), profile=3)
    runs = result["scenarios"]["cli-search"]
    assert set(runs) == {"cold", "warm"} and list(runs["cold"]["steps"]) == ["import simdex", "simdex search"]
    assert runs["cold"]["compile_s"] > 0 and runs["cold"]["top"] and runs["cold"]["top"][0]["signatures"] >= 1
    assert runs["warm"]["compile_s"] == 0
    assert "simdex search" in format_startup(result)


def test_cli_info(tmp_path):
    from simdex import HNSWIndex
    index = HNSWIndex(4, "l2")
    index.add(np.random.default_rng(0).random((50, 4)))
    path = tmp_path / "i.sdx"
    index.save(path)
    out = subprocess.run([sys.executable, "-m", "simdex.cli", "info", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["kind"] == "HNSWIndex" and info["meta"]["count"] == 50


def test_filtered_bench_exact_rows_are_exact_and_auto_keeps_recall(tmp_path):
    from simdex.bench import filtered
    report = filtered.run("wordnet-minilm-384", n_queries=20, n_base=8000, out_dir=tmp_path)
    rows = report["rows"]
    assert {r["selectivity"] for r in rows} == set(filtered.SELECTIVITIES)
    assert all(r["recall"] == 1.0 for r in rows if r["mode"] == "exact")
    assert all(r["recall"] >= 0.9 for r in rows if r["mode"] == "auto")
    assert (tmp_path / "filtered-wordnet-minilm-384.json").exists()


def test_window_bench_small_postfilter_peer_hnswlib_where_installed(tmp_path):
    from simdex.bench import window
    report = window.run("wordnet-minilm-384", n_base=3000, n_queries=30, leaf_size=256, M=8, ef_construction=40,
                        budget_s=0.2, min_queries=10, out_dir=tmp_path, log=lambda *_: None)
    rows = report["rows"]
    # the post-filter baseline is hnswlib where it is installed (the bench extra), else simdex's own HNSW
    post = "postfilter-hnswlib" if importlib.util.find_spec("hnswlib") else "postfilter-hnsw"
    assert report["postfilter_method"] == post
    assert {(r["selectivity"], r["method"]) for r in rows} == {
        (s, m) for s in window.SELECTIVITIES
        for m in ("window", "window-float32", post, "prefilter-bf", "prefilter-bf-sorted")}
    assert all(r["recall"] == 1.0 for r in rows if r["method"].startswith("prefilter"))
    assert all(r["recall"] >= 0.9 and r["qps"] > 0 for r in rows if r["method"].startswith("window"))
    assert set(report["ratios"]) == {str(s) for s in window.SELECTIVITIES}
    assert all(set(by_method) == {"window", "window-float32"} for by_method in report["ratios"].values())
    table = window.format_report(report)
    assert "| 0.5 | window |" in table and "| 0.5 | window-float32 |" in table
    assert (tmp_path / "window-wordnet-minilm-384.json").exists()
    assert (tmp_path / "window-wordnet-minilm-384.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_bench_small_postfilter_peer_hnswlib_where_installed(tmp_path):
    from simdex.bench import labels
    report = labels.run("fashion-mnist-784", n_base=3000, n_queries=40, M=8, ef_construction=40, label_graph_min=250,
                        budget_s=0.2, min_queries=10, out_dir=tmp_path, log=lambda *_: None)
    post = "postfilter-hnswlib" if importlib.util.find_spec("hnswlib") else "postfilter-hnsw"
    by = {r["method"]: r for r in report["rows"]}
    peers = {"filter-hnsw", post, "prefilter-bf"}
    if importlib.util.find_spec("faiss"):  # the test extra installs faiss-cpu
        peers.add("filter-faiss-hnsw")
    assert set(by) == {"labels"} | peers
    # every class has ~300 of the 3,000 images: each gets its own graph
    assert len(report["label_graphs"]) == 10 and sum(report["label_graphs"].values()) == 3000
    assert by["prefilter-bf"]["recall"] == 1.0
    assert by["labels"]["recall"] >= 0.9 and by["labels"]["qps"] > 0
    assert set(report["ratios"]) == peers
    assert "| labels |" in labels.format_report(report)
    assert (tmp_path / "labels-fashion-mnist-784.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_db_bench_every_collection_kind():
    """`python -m simdex.bench db --libs simdex,simdex-ivf-pq,...` on a small slice: every kind of collection is
    built through the database API and swept up to the target recall, and the kinds over codes hold a fraction of
    the float32 HNSW collection's memory; the same indexes used from the library find the same neighbours."""
    from simdex.bench import db
    kinds = ("simdex", "simdex-ivf-pq", "simdex-vamana", "simdex-vamana-disk", "simdex-spann", "simdex-hnsw-lvq8")
    report = db.run(n_base=2000, n_queries=20, libs=kinds + ("lib-hnsw", "lib-spann"), progress=False)
    engines = report["engines"]
    for name in kinds:
        assert engines[name]["sweeps"]["plain"]["at_target"] is not None, name
        assert engines[name]["sweeps"]["filtered"]["at_target"] is not None, name
    float_ram = engines["simdex"]["index_ram_bytes"]
    for name in ("simdex-ivf-pq", "simdex-vamana-disk", "simdex-spann"):
        assert engines[name]["index_ram_bytes"] < float_ram / 4, name
    assert engines["simdex-hnsw-lvq8"]["index_ram_bytes"] < 0.4 * float_ram
    cost = report["database_cost"]
    assert set(cost) == {"hnsw", "spann"}
    for kind in cost:  # the collection's index is the library's, built from the same rows in one merge
        assert cost[kind]["plain"] and all(p["recall"] == p["library_recall"] for p in cost[kind]["plain"])
    assert "simdex-spann" in db.format_report(report) and "library" in db.format_report(report)


def test_merge_bench_on_a_slice():
    """`python -m simdex.bench merge` on a small collection: each merge of new rows and the checkpoint after it are
    measured, and where the system counts the bytes a process writes, they are less than one copy of the
    collection's float32 vectors (which merges and checkpoints no longer rewrite)."""
    from simdex.bench import merge
    report = merge.run(index="hnsw-lvq8", n0=6000, step=500, merges=2, log=lambda *a: None)
    assert [p["rows_before"] for p in report["points"]] == [6000, 6500]
    assert all(p["seconds"] > 0 for p in report["points"])
    assert all(p["written_bytes"] < 6000 * 384 * 4 for p in report["points"])
    assert "hnsw-lvq8" in merge.format_report(report)


def test_calls_bench_on_a_slice(tmp_path):
    """`python -m simdex.bench calls` on a slice: for each kind every timed variant is measured, the library, the
    store layer and the collection return the same answers, and the report and its plot are written."""
    from simdex.bench import calls
    report = calls.run(("hnsw", "ivf-pq"), n_base=3000, n_queries=20, efforts=(16,), rounds=1, progress=False)
    assert set(report["kinds"]) == {"hnsw", "ivf-pq"}
    for kind, points in report["kinds"].items():
        (point,) = points
        assert set(calls.VARIANTS) <= set(point["us_per_query"]), kind
        assert all(us > 0 for us in point["us_per_query"].values())
        assert point["same_answers"] == 1.0, kind
    has_hnswlib = importlib.util.find_spec("hnswlib") is not None  # a bench extra, not a test one
    assert ("hnswlib single" in report["kinds"]["hnsw"][0]["us_per_query"]) == has_hnswlib
    assert "| ivf-pq | 16 |" in calls.format_report(report)
    json_path, png = calls.save(report, tmp_path)
    assert json.loads(json_path.read_text())["n_base"] == 3000 and png.stat().st_size > 0


def test_distributed_bench_on_a_slice():
    """`python -m simdex.bench distributed` on a slice: a local and a 2-shard collection find the same share of
    the true neighbours, and every figure is measured."""
    pytest.importorskip("ray")
    import ray
    from simdex.bench import distributed
    report = distributed.run("local,2x1", n_base=2000, n_queries=40, clients=2, embed_docs=20, log=lambda *a: None)
    ray.shutdown()
    local, sharded = report["layouts"]["local"], report["layouts"]["2x1"]
    assert local["recall"] > 0.9 and sharded["recall"] >= local["recall"] - 0.02
    assert all(v > 0 for p in (local, sharded) for key, v in p.items() if key != "process_memory")
    assert len(local["process_memory"]) == 1 and len(sharded["process_memory"]) == 2  # the caller; two replicas
    assert all(m["anon"] > 0 for p in (local, sharded) for m in p["process_memory"])
    assert "| 2x1 |" in distributed.format_report(report)
    assert "embedded by MiniLM) per second: local" in distributed.format_report(report)


def test_integrations_bench_on_a_slice():
    """`python -m simdex.bench integrations` on a slice: every framework store finds what the collection finds."""
    from simdex.bench import integrations
    report = integrations.run(n_base=1000, n_queries=20, stores=("direct", "langchain", "llamaindex", "haystack"))
    rows = report["stores"]
    assert set(rows) == {"direct", "langchain", "llamaindex", "haystack"}
    assert rows["direct"]["recall"] > 0.9
    for name in ("langchain", "llamaindex", "haystack"):
        assert rows[name]["recall"] == rows["direct"]["recall"], name
        assert f"{name} / direct" in report["ratios"]
    assert "langchain / direct" in integrations.format_report(report)


def test_frontier_bench_on_a_slice(tmp_path):
    """`python -m simdex.bench frontier` on a slice: simdex-qg is the reference of every ratio, a peer that cannot
    run is named with the reason and the others go on (SymphonyQG: not installed, the rabitqlib wheel being in the
    bench extra only, or installed and refusing degree 16), and the report and its plot are written."""
    from simdex.bench import frontier
    report = frontier.run(("wordnet-minilm-384",), ("simdex-qg", "simdex", "faiss", "symqg"), M=8,
                          ef_construction=40, efs=(10, 40, 160), n_base=3000, n_queries=100, repeats=1, threads=2,
                          log=lambda *_: None)
    (single,) = report["datasets"]
    libs = [r["library"] for r in single["results"]]
    assert libs == ["simdex-qg", "simdex", "faiss"]
    why = single["skipped"]["symqg"]
    assert why.startswith("build failed" if importlib.util.find_spec("rabitqlib") else "not installed"), why
    qg = next(r for r in single["results"] if r["library"] == "simdex-qg")
    assert max(p["recall"] for p in qg["points"]) >= 0.95
    (versus,) = report["versus"]
    assert set(versus["qps"]) >= {"simdex", "faiss"} and versus["size"]["simdex"] > 1.0  # the edge codes
    assert "simdex-qg QPS / each library's QPS" in frontier.format_report(report)
    json_path, png = frontier.save(report, tmp_path)
    assert json.loads(json_path.read_text())["reference"] == "simdex-qg" and png.stat().st_size > 0
