"""Every Python and shell snippet of the README and the docs runs as printed (or as its marker says)."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snippets import ROOT, RUN_LANGS, SHOWN_LANGS, pages, snippets

HERE = Path(__file__).resolve().parent
PAGES = [p for p in pages() if any(s.kind and s.skip is None for s in snippets(p))]
SKIPPED = [s for p in pages() for s in snippets(p) if s.skip is not None]


def test_every_block_says_its_language():
    """An unlabelled block would escape this test: every fence names a language that is run or shown."""
    bad = [s.id for p in pages() for s in snippets(p) if s.lang not in RUN_LANGS and s.lang not in SHOWN_LANGS]
    assert not bad, f"blocks without a known language (use python, bash or text): {bad}"


def test_markers_are_used():
    """A skip gives a reason; a sub replaces text that is in its snippet."""
    for p in pages():
        for s in snippets(p):
            assert s.skip is None or len(s.skip) > 15, f"{s.id}: a skip must say why"
            if s.subs:
                s.runnable_code()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_snippets_run(page, tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(HERE / "snippets.py"), str(page), str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{page.relative_to(ROOT)}: snippets failed\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    print(f"{page.relative_to(ROOT)}: {time.perf_counter() - t0:.1f} s")


@pytest.mark.parametrize("snip", SKIPPED, ids=[s.id for s in SKIPPED])
def test_skipped_snippet_says_why(snip):
    pytest.skip(f"not run by the docs test: {snip.skip}")
