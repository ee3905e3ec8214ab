"""Every Python code block of README.md (and of the framework pages, docs/integrations/*.md) runs as a newcomer
would run it: in a fresh process and an empty folder, with the inputs the block assumes (``vectors``, ``queries``,
``texts``, ...) taken from the shared WordNet data, so that the documentation cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
PAGES = sorted((ROOT / "docs" / "integrations").glob("*.md"))
PAGE_BLOCKS = [(page.stem, block) for page in PAGES
               for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]

# what the blocks take as given: real vectors and texts (a block that needs another name fails, which is the point)
PRELUDE = """
import numpy as np
from simdex import datasets
_data = datasets.load("wordnet-minilm-384").subset(2000, 20)
vectors, queries = _data.base, _data.queries
vecs, query = vectors[:2], queries[0]
allowed_ids = np.arange(0, 2000, 2)
old_ids = [3, 17]
texts = datasets.wordnet_records()[2][:500]
doc_tokens = [vectors[i:i + 5] for i in range(0, 500, 5)]
query_token_sets = [queries[i:i + 3] for i in range(0, 9, 3)]
"""


def test_the_readme_has_code_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_block_runs(tmp_path, number):
    block = BLOCKS[number]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-c", PRELUDE + block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"README block {number}:\n{block}\n--- stderr ---\n{done.stderr[-3000:]}"


def test_every_framework_page_has_an_example():
    assert {p.stem for p in PAGES} == {"langchain", "llamaindex", "haystack"}
    assert {name for name, _ in PAGE_BLOCKS} == {"langchain", "llamaindex", "haystack"}


@pytest.mark.parametrize("name, block", PAGE_BLOCKS, ids=[name for name, _ in PAGE_BLOCKS])
def test_framework_page_example_runs(tmp_path, name, block):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-c", PRELUDE + block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"docs/integrations/{name}.md:\n{block}\n--- stderr ---\n{done.stderr[-3000:]}"
