"""The labels' bound on the ``.kwx`` pages they leave mapped (`phy_autolabel.pages`).

A gather of a few bytes per spike maps far more of the file than it reads (the
kernel maps neighbouring pages on each fault): the bound is checked against the
process's file-backed RSS as ``/proc/self/status`` reports it.
"""

import numpy as np
import pytest

from phy_autolabel.pages import PageBudget, mapped_file_bytes

pytestmark = pytest.mark.skipif(mapped_file_bytes() is None,
                                reason="needs /proc/self/statm (Linux)")

MB = 2 ** 20
ROW_SHAPE = (3072, 2)  # a 1024-channel .kwx row: 3 features and their masks, float32 (24 KB)


def _rss_file() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile")


@pytest.fixture(scope="module")
def kwx(tmp_path_factory):
    """A 96 MB file shaped like a 1024-channel ``.kwx`` (its pages in the page cache)."""
    path = tmp_path_factory.mktemp("pages") / "rec.kwx.raw"
    n_rows = 4096
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(n_rows, *ROW_SHAPE))
    out[:] = np.arange(n_rows, dtype=np.float32)[:, None, None]
    out.flush()
    del out
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n_rows, *ROW_SHAPE))


def _gather(fm, budget, ids, columns, block):
    """Gather `columns` of rows `ids` in blocks; the largest RSS growth seen after a block."""
    base, growth, out = _rss_file(), 0, []
    for start in range(0, len(ids), block):
        rows = ids[start:start + block]
        out.append(fm[rows[:, None], columns[None, :], 0])
        growth = max(growth, _rss_file() - base)
        if budget is not None:
            budget.read(len(rows) * 64 * 1024)
    return np.concatenate(out), growth


def test_gathers_map_more_than_they_read_and_the_budget_bounds_it(kwx):
    ids = np.arange(0, len(kwx), 3)  # 1366 rows, 96 bytes read from each
    columns = np.arange(300, 312)
    budget = PageBudget(kwx, 0)
    budget.release()
    # Without the budget: the reads map many times the 128 KB they read (at least 8 KB
    # per row, a page or two of each; the kernel's fault-around maps more).
    values, unbounded = _gather(kwx, None, ids, columns, 64)
    np.testing.assert_array_equal(values, np.repeat(ids[:, None], len(columns), 1))
    assert unbounded > 16 * MB
    budget.release()
    # With a 4 MB budget and 64-row blocks (at most ~8 MB each): well under that.
    budget = PageBudget(kwx, 4 * MB)
    values, bounded = _gather(kwx, budget, ids, columns, 64)
    np.testing.assert_array_equal(values, np.repeat(ids[:, None], len(columns), 1))
    assert budget.n_releases >= 2
    assert bounded <= 4 * MB + 10 * MB < unbounded


def test_a_file_within_the_budget_stays_mapped(kwx):
    budget = PageBudget(kwx, 0)
    budget.release()
    budget = PageBudget(kwx, 1024 * MB)
    _, growth = _gather(kwx, budget, np.arange(0, len(kwx), 5), np.arange(12), 64)
    assert budget.n_releases == 0 and growth > 0


def test_without_measurements_the_estimates_count(kwx, monkeypatch):
    from phy_autolabel import pages

    monkeypatch.setattr(pages, "mapped_file_bytes", lambda: None)
    budget = PageBudget(kwx, 10)
    budget.read(6)
    assert budget.n_releases == 0
    budget.read(6)
    assert budget.n_releases == 1
    budget.read(6)
    assert budget.n_releases == 1
