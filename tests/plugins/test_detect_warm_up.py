"""Fixed costs of a detection: what the forkserver, the workers and the runner load once."""

import json
import subprocess
import sys
import types

import pytest

from phy_synthetic.recording import synthesize_recording

# In a fresh interpreter: the forkserver's preload, then the runner's own warm-up, then a
# whole detection in this process (serial: every worker task runs here, on the read-only
# memory map of the recording). Prints the numba kernels that had to load another version.
_SCRIPT = """
import json, sys
import numba.core.registry
import phy_detect.preload  # what the forkserver runs before forking the workers
from phy_core.plugins import create_plugin_manager
from phy_detect import runner
from phy_detect.executors import SerialExecutor

assert phy_detect.preload.WARMED is not None
stages = runner.choose_stages(create_plugin_manager())
single = sys.argv[3] == "single"
runner._warm_up_parent(stages, single)  # what the runner loads while it waits

def kernels():
    import gc
    return {f"{d.py_func.__module__}.{d.__name__}": len(d.signatures) for d in gc.get_objects()
            if isinstance(d, numba.core.registry.CPUDispatcher)
            and d.py_func.__module__.startswith("phy_detect")}

before = kernels()
prm = sys.argv[1]
if not single:
    text = open(prm).read().replace("spikedetekt = dict(",
                                    "spikedetekt = dict(use_single_threshold=False, ", 1)
    prm = sys.argv[2] + "/rec.prm"
    open(prm, "w").write(text)
runner.detect(prm, output_dir=sys.argv[2], executor=SerialExecutor(), overwrite=True,
              chunk_size_s=0.5)
after = kernels()
print(json.dumps({k: [before.get(k, 0), n] for k, n in after.items() if n != before.get(k, 0)}))
"""


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rec")
    synthesize_recording(folder, name="rec", probe="linear32", duration_s=2.0, seed=5)
    # Absolute paths: the PRM may be copied elsewhere.
    prm = folder / "rec.prm"
    prm.write_text(prm.read_text().replace("'rec.", f"'{folder}/rec."))
    return prm


@pytest.mark.parametrize("single", ["single", "per-channel"])
def test_warmed_up_processes_load_no_kernel_during_a_detection(recording, tmp_path, single):
    # A kernel version missing from the warm-up (e.g. for read-only int16 traces, or
    # thresholds that are a copy in one path and a view in another) costs each worker a
    # load from numba's cache (15-70 ms each) on its first real chunk, and the runner
    # its first numba load (~0.5 s) during the PCA fit.
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(recording), str(tmp_path),
                           single], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {}


def test_workers_forked_from_the_preload_skip_their_warm_up(monkeypatch):
    from phy_detect import worker
    from phy_detect.preload import BUILTIN_STAGES

    names = {kind: (name, dict(arguments)) for kind, (name, arguments) in
             BUILTIN_STAGES.items()}
    names["filter"][1]["rate"] = 20000.0  # a value, not a type: the same kernels
    fake = types.SimpleNamespace(WARMED=None)
    monkeypatch.setitem(sys.modules, "phy_detect.preload", fake)
    assert not worker._preloaded(names)  # the preload failed, or did not run
    fake.WARMED = BUILTIN_STAGES
    assert worker._preloaded(names)
    other = dict(names, filter=("butterworth", dict(names["filter"][1], precision="float64")))
    assert not worker._preloaded(other)  # other kernels
    assert not worker._preloaded(dict(names, detector=("lab-detector", {})))
    assert not worker._preloaded({k: v for k, v in names.items() if k != "extractor"})
    ran = []
    monkeypatch.setattr(worker, "_warm_up_stages", ran.append)
    monkeypatch.setattr(worker, "_traces", lambda prm_path: None)
    worker.warm_up("rec.prm", names)
    assert ran == []
    worker.warm_up("rec.prm", other)
    assert ran == [other]


def test_preload_finds_the_built_in_stages_without_plugins():
    from phy_detect import filtering, floodfill, threshold, waveform
    from phy_detect.preload import BUILTIN_STAGES, builtin_factories

    factories = builtin_factories(BUILTIN_STAGES)
    assert factories["filter"][0] is filtering._make_filter
    assert factories["threshold"][0] is threshold._make_thresholder
    assert factories["detector"][0].__module__ == floodfill.__name__
    assert factories["extractor"][0] is waveform._make_extractor
    with pytest.raises(KeyError):
        builtin_factories({"filter": ("no-such-filter", {})})


def test_thresholds_reach_the_kernels_as_one_array_type():
    # One value or one per channel, the kernels get new writable float32 arrays.
    import numpy as np

    from phy_detect.threshold import Thresholder, _channel_thresholds

    data = np.zeros((16, 3), np.float32)
    for thresholds in ({"weak": 1.0, "strong": 2.0},
                       {"weak": np.ones(3), "strong": np.full(3, 2.0)}):
        thresholder = Thresholder("negative", thresholds)
        data_t, weak, strong = thresholder.transform_bits(data)
        assert weak.shape == (2, 3) and not weak.any()
        t = _channel_thresholds(thresholder.thresholds["weak"], data, 3)
        assert t.dtype == np.float32 and t.flags.writeable and t.flags.c_contiguous
        np.testing.assert_array_equal(t, [1.0, 1.0, 1.0])
