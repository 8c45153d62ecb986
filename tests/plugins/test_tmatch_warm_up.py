"""The template-matching workers' scratch arrays made ahead (`worker.reserve_scratch`,
`runner.worker_scratch`): large enough for every job of a run, and shared with it."""

from __future__ import annotations

import numpy as np
import pytest

from phy_detect.executors import SerialExecutor
from phy_synthetic.recording import synthesize_recording
from phy_tmatch import residual, worker
from phy_tmatch.runner import match_spikes, worker_scratch

DURATION_S = 4.0


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tmatch_warm_up")
    synthesize_recording(folder, name="rec", probe="linear32", duration_s=DURATION_S, seed=3)
    return folder


def test_reserved_scratch_arrays_are_written_and_then_reused():
    worker.release_scratch()
    try:
        worker.reserve_scratch({"chunk": ((100, 8), "float32"), "blocked": ((3, 50), "uint8")})
        reserved = worker._SCRATCH.arrays["chunk"]
        assert reserved.size == 800 and np.all(reserved == 0)  # every page written
        assert worker._SCRATCH.arrays["blocked"].dtype == np.uint8
        # A job's smaller chunk (another shape) is the reserved memory, not a new array.
        smaller = worker.scratch("chunk", (60, 8))
        assert np.shares_memory(smaller, reserved) and smaller.shape == (60, 8)
        assert worker.scratch("chunk", (101, 8)).size == 808  # larger: a new one
    finally:
        worker.release_scratch()


def test_the_reservation_covers_every_scratch_array_of_a_run(recording, tmp_path,
                                                             monkeypatch):
    """Every scratch array the three passes of a run ask for (recorded here) fits in what
    `worker_scratch` and the runner's reservation (the templates' arrays) make ahead: the
    chunk of the longest matching chunk with its margins, its channel-major copy, the
    pooled residual, the projections and the pursuit's arrays."""
    from phy_rawdata.prm import read_prm

    gt = dict(np.load(recording / "rec.groundtruth.npz"))
    prm = read_prm(recording / "rec.prm")
    options = dict(refine_rounds=1, chunk_size_s=1.5)
    shapes = worker_scratch(prm, 0, **options)
    assert set(shapes) == {"chunk", "xt", "pooled"}
    n_load = shapes["chunk"][0][0]
    # A chunk of 1.5 s plus its two margins: more than the chunk, less than the recording.
    assert 1.5 * prm.traces.sample_rate < n_load < DURATION_S * prm.traces.sample_rate
    assert shapes["xt"][0] == shapes["pooled"][0] == (32, n_load)

    asked: dict = {}
    reserved: list = []
    scratch = worker.scratch

    def recording_scratch(name, shape, dtype=np.float32):
        size = int(np.prod(shape))
        key = (name, np.dtype(dtype).name)
        asked[key] = max(asked.get(key, 0), size)
        return scratch(name, shape, dtype)

    def recording_warm_up(self, func, *args):
        reserved.append((func, args))
        return []

    monkeypatch.setattr(worker, "scratch", recording_scratch)
    monkeypatch.setattr(residual, "scratch", recording_scratch)  # bound at its import
    monkeypatch.setattr(SerialExecutor, "warm_up", recording_warm_up)
    match_spikes(recording / "rec.prm", gt["spike_samples"], gt["spike_clusters"],
                 tmp_path / "out", executor=SerialExecutor(), **options)
    # The runner asks for the templates' arrays once the template pass is done.
    func, (templates_shapes,) = next((f, a) for f, a in reserved
                                     if f is worker.reserve_scratch)
    n_clusters = len(np.unique(gt["spike_clusters"]))
    assert templates_shapes["b"][0][0] >= n_clusters
    every = dict(shapes, **templates_shapes)
    # (Not the small ones: a sample of the pooled residual, the pursuit's marks.)
    for name in ("chunk", "xt", "pooled", "b", "score", "blocked", "search"):
        dtypes = {d for n, d in asked if n == name}
        assert dtypes == {np.dtype(every[name][1]).name}, name
        assert asked[name, dtypes.pop()] <= int(np.prod(every[name][0])), name
