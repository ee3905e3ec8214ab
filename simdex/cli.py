"""The ``simdex`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simdex", description="simdex similarity search")
    parser.add_argument("--version", action="version", version=f"simdex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="index a real data set, run its queries, print recall and latency")
    demo.add_argument("--dataset", default="wordnet-minilm-384")
    demo.add_argument("--ef", type=int, default=64)
    demo.add_argument("--threads", type=int, default=None)
    info = sub.add_parser("info", help="describe a saved index file (header only; checks checksums)")
    info.add_argument("path")
    from .bench.__main__ import build_parser as bench_parser
    bench_parser(sub.add_parser("bench", help="benchmarks against peer libraries (see python -m simdex.bench)"))
    from .sets.cli import register as register_sets, run as run_sets  # sets hook: `simdex dedup`
    register_sets(sub)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main
        demo_main(args.dataset, args.ef, args.threads)
        return 0
    if args.command == "info":
        from .fileformat import load_arrays
        kind, meta, arrays = load_arrays(args.path, mmap=True)
        print(json.dumps({"kind": kind, "meta": meta,
                          "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()}},
                         indent=1))
        return 0
    if args.command == "dedup":
        return run_sets(args)
    if args.command == "bench":
        from .bench.__main__ import main as bench_main
        argv = sys.argv[1:] if argv is None else argv
        return bench_main(argv[argv.index("bench") + 1:])
    return 2


if __name__ == "__main__":
    sys.exit(main())
