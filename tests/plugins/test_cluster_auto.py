"""``phy cluster-auto``: lazy features, checkpoints, resuming after an interruption."""

import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from phy_kwik.creator import KwikCreator
from phy_kwik.model import KwikModel
from phy_masked_em.command import (
    KwxPlane,
    checkpoint_path,
    cluster_kwik,
    find_checkpoints,
    input_identity,
    kwik_parameters,
    load_checkpoint,
    save_checkpoint,
)

# Overlapping clusters and no early stop (num_changed_threshold = 0): the masked EM takes
# some 20 iterations on these spikes, so that a run can be interrupted in the middle.
KK2 = dict(num_changed_threshold=0.0)
N_SPIKES, N_CHANNELS, NFPC, N_UNITS = 1500, 8, 3, 6


def _features(seed=0):
    rng = np.random.default_rng(seed)
    units = rng.integers(0, N_UNITS, N_SPIKES)
    centre = rng.integers(0, N_CHANNELS, N_UNITS)
    distance = np.abs(np.arange(N_CHANNELS)[None] - centre[units][:, None])
    masks = np.clip(1.0 - distance / 3.0, 0, 1).astype(np.float32)
    means = rng.normal(0, 1.5, (N_UNITS, N_CHANNELS * NFPC))
    features = rng.standard_normal((N_SPIKES, N_CHANNELS * NFPC))
    features += np.repeat(masks, NFPC, axis=1) * means[units]
    return features.astype(np.float32), masks


def _make_kwik(path):
    features, masks = _features()
    creator = KwikCreator(path)
    creator.create_empty()
    channels = list(range(N_CHANNELS))
    creator.set_probe({0: dict(channels=channels, graph=[(c, c + 1) for c in channels[:-1]],
                               geometry={c: (0.0, 20.0 * c) for c in channels})})
    creator.add_recording(0, sample_rate=20000.0)
    creator.set_metadata("/application_data/spikedetekt", sample_rate=20000.0,
                         n_features_per_channel=NFPC)
    creator.set_metadata("/application_data/klustakwik2", **KK2)
    creator.add_spikes(0, np.arange(N_SPIKES) * 100, masks=masks, features=features)
    creator.add_clustering(0, "main", np.zeros(N_SPIKES, dtype=np.int64), {0: 3})
    return features, masks


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A Kwik file (`pristine`, never clustered) and the result of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("cluster_auto")
    pristine = folder / "pristine" / "x.kwik"
    pristine.parent.mkdir()
    _make_kwik(pristine)
    once = folder / "once" / "x.kwik"
    shutil.copytree(pristine.parent, once.parent)
    info = cluster_kwik(once, checkpoint_every_s=1e9)
    assert info["resumed_at"] is None and info["previous"] == "main_previous"
    assert find_checkpoints(once) == []  # deleted once the result is saved
    with KwikModel(once) as model:
        labels = model.spike_clusters.copy()
    assert len(np.unique(labels)) > 1
    return pristine, labels


@pytest.fixture
def kwik(reference, tmp_path):
    path = tmp_path / "x.kwik"
    shutil.copy(reference[0], path)
    shutil.copy(reference[0].with_suffix(".kwx"), path.with_suffix(".kwx"))
    return path


def _main_clustering(path):
    with KwikModel(path) as model:
        return model.spike_clusters.copy(), list(model.clusterings)


def test_kwx_plane_reads_rows_as_float32(kwik):
    import h5py

    features, masks = _features()
    with h5py.File(kwik.with_suffix(".kwx"), "r") as f:
        fm_h5 = f["/channel_groups/0/features_masks"]
        fm = fm_h5[...]
        for source in (fm_h5, fm.astype(np.float64)):
            fet, msk = KwxPlane(source, 0), KwxPlane(source, 1, step=NFPC)
            assert fet.shape == features.shape and msk.shape == masks.shape
            np.testing.assert_array_equal(fet[10:20], features[10:20])
            assert fet[10:20].dtype == np.float32 and msk[:5].dtype == np.float32
            np.testing.assert_array_equal(msk[100:103], masks[100:103])
            np.testing.assert_array_equal(fet[[7, 3, 7]], features[[7, 3, 7]])
            np.testing.assert_array_equal(fet[5], features[5])
            np.testing.assert_array_equal(np.asarray(msk), masks)
            np.testing.assert_array_equal(np.asarray(fet, dtype=np.float64), features)


class _Seen(Exception):
    pass


def test_cluster_kwik_passes_lazy_views(kwik, monkeypatch):
    import phy_masked_em.command as command

    def spy(features, masks, *args, **kwargs):
        # What the algorithm receives (the fixture checked the result of the real thing).
        raise _Seen(type(features), type(masks), features.shape, masks.shape)

    monkeypatch.setattr(command, "masked_em", spy)
    with pytest.raises(_Seen) as info:
        cluster_kwik(kwik)
    assert info.value.args == (KwxPlane, KwxPlane, (N_SPIKES, N_CHANNELS * NFPC),
                               (N_SPIKES, N_CHANNELS))


def _phy(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "phy_core.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# `phy cluster-auto` that receives a signal right after its checkpoint of iteration 3 (from
# itself, so that the moment does not depend on how fast the machine is).
_SIGNALLED_AFTER_CHECKPOINT = """
import os, signal, sys
import phy_masked_em.command as command
from phy_core.cli import main

# A process started in the background by a non-interactive shell inherits SIGINT ignored
# (POSIX), and Python then leaves it so: Ctrl+C as a terminal delivers it.
signal.signal(signal.SIGINT, signal.default_int_handler)

save = command.save_checkpoint

def save_then_signal(path, identity, iteration, *args, **kwargs):
    save(path, identity, iteration, *args, **kwargs)
    if iteration == 3:
        os.kill(os.getpid(), int(os.environ["SIGNAL"]))

command.save_checkpoint = save_then_signal
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_to_the_same_result(kwik, reference, sig):
    ckpt = checkpoint_path(kwik, 0)
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_AFTER_CHECKPOINT, "cluster-auto", str(kwik),
         "--checkpoint-every", "0"], capture_output=True, text=True,
        env=dict(os.environ, SIGNAL=str(int(sig))), timeout=120)
    # Ctrl+C: phy's exit code for an interruption; a kill: killed by the signal.
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), \
        f"exit code {proc.returncode}: {proc.stderr}"
    with KwikModel(kwik) as model:
        identity = input_identity(model, kwik_parameters(model))
    state = load_checkpoint(ckpt, identity)
    assert state is not None and not state["complete"] and state["iteration"] == 3
    # Nothing was saved in the Kwik file.
    clusters, names = _main_clustering(kwik)
    assert not clusters.any() and "main_previous" not in names

    proc = _phy("cluster-auto", kwik)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Resuming masked EM at iteration 4" in err
    assert not ckpt.exists()
    clusters, names = _main_clustering(kwik)
    np.testing.assert_array_equal(clusters, reference[1])
    assert "main_previous" in names


def _checkpoint_of(kwik, parameters):
    with KwikModel(kwik) as model:
        return input_identity(model, kwik_parameters(model, parameters))


def test_mismatching_checkpoint_is_ignored(kwik, reference, caplog):
    ckpt = checkpoint_path(kwik, 0)
    # Labels that would give another result, saved for other parameters.
    other = _checkpoint_of(kwik, dict(penalty_k_log_n=2.0))
    save_checkpoint(ckpt, other, 3, np.arange(N_SPIKES) % 4 + 2)
    with caplog.at_level(logging.WARNING, logger="phy"):
        info = cluster_kwik(kwik, checkpoint_every_s=1e9)
    assert info["resumed_at"] is None
    assert "checkpoint of another input" in caplog.text and "penalty_k_log_n" in caplog.text
    np.testing.assert_array_equal(_main_clustering(kwik)[0], reference[1])
    assert not ckpt.exists()


def test_finished_checkpoint_is_saved_and_restart_ignores_it(kwik, reference):
    ckpt = checkpoint_path(kwik, 0)
    identity = _checkpoint_of(kwik, {})
    # A run that finished but was interrupted while saving: its result is saved as is.
    done = np.arange(N_SPIKES) % 3 + 2
    save_checkpoint(ckpt, identity, 999, done, complete=True)
    info = cluster_kwik(kwik)
    assert info["resumed_at"] == 999 and info["n_clusters"] == 3
    np.testing.assert_array_equal(_main_clustering(kwik)[0], done)
    assert not ckpt.exists()
    # --restart: the same checkpoint is ignored, the algorithm runs from the start.
    save_checkpoint(ckpt, identity, 999, done, complete=True)
    proc = _phy("cluster-auto", kwik, "--restart")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Resuming" not in err and "had finished" not in err
    clusters, names = _main_clustering(kwik)
    np.testing.assert_array_equal(clusters, reference[1])
    assert {"main_previous", "main_previous_2"} <= set(names)


def test_checkpoints_that_cannot_be_written_do_not_stop_the_clustering(kwik, reference, caplog):
    # A directory where the checkpoint should be: it can be neither read, written nor deleted.
    ckpt = checkpoint_path(kwik, 0)
    ckpt.mkdir()
    with caplog.at_level(logging.WARNING, logger="phy"):
        info = cluster_kwik(kwik, checkpoint_every_s=0)
    assert info["resumed_at"] is None
    for message in ("unreadable checkpoint", "cannot save the progress",
                    "cannot delete this checkpoint"):
        assert caplog.text.count(message) == 1, message
    np.testing.assert_array_equal(_main_clustering(kwik)[0], reference[1])


def test_unreadable_or_other_data_checkpoint_is_ignored(kwik, caplog):
    ckpt = checkpoint_path(kwik, 0)
    identity = _checkpoint_of(kwik, {})
    labels = np.arange(N_SPIKES) % 4 + 2
    save_checkpoint(ckpt, identity, 5, labels)
    state = load_checkpoint(ckpt, identity)
    assert state["iteration"] == 5 and not state["complete"]
    np.testing.assert_array_equal(state["labels"], labels)
    # The .kwx was rewritten since (another detection): same size, new modification time.
    kwx = kwik.with_suffix(".kwx")
    stat = kwx.stat()
    os.utime(kwx, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    with caplog.at_level(logging.WARNING, logger="phy"):
        assert load_checkpoint(ckpt, _checkpoint_of(kwik, {})) is None
    assert "checkpoint of another input" in caplog.text and "kwx_mtime_ns" in caplog.text
    caplog.clear()
    ckpt.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="phy"):
        assert load_checkpoint(ckpt, identity) is None
    assert "unreadable checkpoint" in caplog.text
    assert load_checkpoint(kwik.with_name("missing.npz"), identity) is None


def test_checkpoint_every_must_be_positive(kwik):
    proc = _phy("cluster-auto", kwik, "--checkpoint-every", "-1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "--checkpoint-every" in err


def test_channel_group_without_spikes(tmp_path):
    features, masks = _features()
    creator = KwikCreator(tmp_path / "two")
    creator.create_empty()
    creator.set_probe({0: dict(channels=list(range(N_CHANNELS))),
                       1: dict(channels=[N_CHANNELS, N_CHANNELS + 1])})
    creator.add_recording(0, sample_rate=20000.0)
    creator.add_spikes(0, np.arange(N_SPIKES) * 100, masks=masks, features=features)
    info = cluster_kwik(tmp_path / "two.kwik", channel_group=1)
    assert (info["n_spikes"], info["n_clusters"], info["channel_group"]) == (0, 0, 1)
    assert find_checkpoints(tmp_path / "two.kwik") == []
