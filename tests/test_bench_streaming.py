"""The streaming benchmark (Vamana under delete/re-insert cycles with a concurrent search thread; side by side with
hnswlib only where hnswlib is installed: it is in the bench extra, not the test extra, because it builds from source
with a C++ compiler) and the SSD-resident Vamana benchmark run end to end on small slices and report what they
promise."""

from __future__ import annotations

import importlib.util
import json

import numpy as np

from simdex.bench import streaming, vamana_disk


def test_streaming_bench_small_with_hnswlib_where_installed(tmp_path):
    # hnswlib is the side-by-side peer where it is installed (the bench extra; it needs a C++ compiler)
    libs = ("simdex", "hnswlib") if importlib.util.find_spec("hnswlib") else ("simdex",)
    report = streaming.run("wordnet-minilm-384", n_base=2000, n_queries=100, cycles=2, chunks=3, R=16, L_build=32,
                           L=48, M=8, ef_construction=64, libs=libs, log=lambda *_: None)
    assert [r["library"] for r in report["results"]] == list(libs)
    for r in report["results"]:
        assert len(r["cycles"]) == 2
        assert r["recall_fresh"] >= 0.9
        assert r["deleted_ids_returned"] == 0, f"{r['library']} returned deleted ids"
        assert r["insert_per_s"] > 0 and r["delete_per_s"] > 0 and r["latency_p99_ms"] > 0
        assert r["searches"] > 0
        for c in r["cycles"]:
            assert 0.0 <= c["recall_after_cycle"] <= 1.0 and c["deleted"] == 200
    vamana = report["results"][0]
    assert vamana["max_drop_vs_fresh"] <= 0.05
    text = streaming.format_report(report)
    assert "| simdex | L=48 |" in text and ("hnswlib" not in libs or "| hnswlib | ef=48 |" in text)
    json_path, png_path = streaming.save(report, tmp_path)
    assert json.loads(json_path.read_text())["n_base"] == 2000
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_live_truth_skips_deleted_ids():
    top = np.array([[5, 3, 9, 1, 7]])
    dead = np.zeros(10, bool)
    dead[[3, 9]] = True
    np.testing.assert_array_equal(streaming.live_truth(top, dead, 2), [[5, 1]])


def test_vamana_disk_bench_small(tmp_path):
    report = vamana_disk.run("wordnet-minilm-384", n_base=1500, n_queries=50, codec="lvq8", R=16, L_build=32,
                             Ls=(32,), work_dir=str(tmp_path / "work"), log=lambda *_: None)
    assert [p["release_pages"] for p in report["points"]] == [True, False]
    assert all(p["recall"] >= 0.9 for p in report["points"])
    assert report["index_ram_bytes"] < 0.35 * report["float32_bytes"]
    assert all(p["peak_rss_bytes"] > report["baseline_rss_bytes"] for p in report["points"])
    assert "pages released" in vamana_disk.format_report(report)
    assert vamana_disk.save(report, tmp_path).exists()
