"""``phy cluster-auto FILE.kwik``: masked EM clustering of a Kwik dataset, resumable.

The previous ``main`` clustering (if any) is first copied to
``main_previous`` (or ``main_previous_2``, ... if taken); the result is then
saved as ``main`` through `KwikModel.save` (which writes it safely), with
cluster 0 in the noise group, 1 in the MUA group and the others unsorted.
Parameters come from the ``klustakwik2`` metadata of the Kwik file when
present (the PRM values used at detection), else the defaults; the caller
may override them.

Memory
    The features and masks are not loaded as a whole: the algorithm gets
    row-sliceable float32 views (`KwxPlane`) of the ``.kwx``
    ``features_masks`` dataset and reads the rows it needs. The pages of a
    memory-mapped ``.kwx`` are released once their rows are read, so that the
    resident memory is the algorithm's, not the file's. With more spikes than
    the ``max_spikes`` parameter, the model is fitted on a subset and every spike
    assigned by one last E-step (see `loop`): the checkpoints of a running fit
    hold the labels of the subset.

Resuming
    While the algorithm runs, its labels are saved atomically at most every
    `CHECKPOINT_EVERY_S` seconds (and when it ends) to
    ``<kwik stem>.cluster-auto.<channel group>.npz`` beside the Kwik file,
    with what identifies the input: the channel group, the number of spikes
    and features, the parameters, the ``.kwx`` size and modification time. A
    later run on the same input resumes from it ("Resuming masked EM at
    iteration k"); a checkpoint made for another input is ignored with a
    warning (and replaced); ``--restart`` ignores it. The checkpoint is
    deleted once the result is saved in the Kwik file.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data import MaskedEMError
from .loop import DEFAULT_PARAMETERS, masked_em, n_fitted

logger = logging.getLogger("phy")

#: Minimum time between two checkpoints of a running clustering (seconds).
CHECKPOINT_EVERY_S = 5.0
CHECKPOINT_SUFFIX = ".npz"
_CHECKPOINT_VERSION = 2
# Rows read at once when a whole plane is converted to an array (bounds the temporary
# buffer of an h5py read, which reads both planes, to about 32 MB).
_BLOCK_BYTES = 32 * 2 ** 20


def add_arguments(parser) -> None:
    parser.add_argument("path", help="The .kwik file.")
    parser.add_argument("--channel-group", type=int, default=None,
                        help="Channel group to cluster (default: the first one).")
    parser.add_argument("--clustering-name", default="main",
                        help="Name of the clustering to write (default: main).")
    parser.add_argument("--restart", action="store_true",
                        help="Ignore a checkpoint left by an interrupted run and start over.")
    parser.add_argument("--checkpoint-every", type=float, default=CHECKPOINT_EVERY_S,
                        metavar="SECONDS",
                        help="Save the progress at most this often (default: "
                        f"{CHECKPOINT_EVERY_S:g} s; 0: after every iteration).")


# -- Lazy views of the .kwx ---------------------------------------------------------


class KwxPlane:
    """One plane of a ``features_masks`` dataset ``(n_spikes, n_columns, 2)``, read by rows.

    ``KwxPlane(fm, 0)`` are the features ``fm[:, :, 0]``; ``KwxPlane(fm, 1,
    step=n_features_per_channel)`` the per-channel masks ``fm[:, ::step, 1]``.
    Indexing reads only the rows asked (a slice, an integer or an integer
    array) and returns float32; ``np.asarray(plane)`` reads everything, in
    blocks of rows.

    Parameters
    ----------
    fm : array-like
        A memory map or h5py dataset of shape ``(n_spikes, n_columns, 2)``.
    plane : int
        0 for features, 1 for masks.
    step : int
        Keep every `step`-th column.
    where : str
        Names the data in read errors.
    """

    def __init__(self, fm: Any, plane: int, step: int = 1, where: str = "") -> None:
        n, n_columns, n_planes = fm.shape
        if n_planes != 2 or plane not in (0, 1) or step < 1:
            raise MaskedEMError(f"{where}: expected (n_spikes, n_columns, 2) features and "
                                f"masks, got shape {fm.shape}.")
        self._fm, self._plane, self._step, self._where = fm, plane, int(step), where
        self.shape = (int(n), len(range(0, int(n_columns), self._step)))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item) -> np.ndarray:
        from phy_kwik.arrays import read_rows

        data, rest, scalar = read_rows(self._fm, item, self.shape[0], self._where)
        # On a memory map `data` is a view: only the plane's columns are copied.
        out = np.ascontiguousarray(data[:, ::self._step, self._plane], dtype=np.float32)
        if isinstance(item, slice):
            _release_pages(self._fm, item, self.shape[0])
        if rest:
            out = out[(slice(None), *rest)]
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        block = max(1, _BLOCK_BYTES // max(1, 8 * self._fm.shape[1]))
        for start in range(0, self.shape[0], block):
            out[start:start + block] = self[start:start + block]
        return out if dtype is None else out.astype(dtype, copy=False)


def _release_pages(fm: Any, rows: slice, n: int) -> None:
    """Drop the pages of rows `rows` of a read-only memory map from this process's memory.

    The masked EM reads the ``.kwx`` once, in row blocks, into its own sparse copy.
    Pages of a memory map stay mapped once read and count in the resident memory: on
    a 1024-channel recording of 140,000 spikes (a 3.4 GB ``.kwx``) they were most of
    the clustering's 4.5 GB peak RSS. They are clean pages of a read-only file, so
    dropping them loses nothing (the kernel reads them again if needed).
    """
    mm = getattr(fm, "_mmap", None)
    if not isinstance(fm, np.memmap) or mm is None or fm.mode != "r" or not fm.flags.c_contiguous:
        return
    start, stop, step = rows.indices(n)
    if step != 1 or stop <= start:
        return
    row_bytes = fm.strides[0]
    # The array starts `delta` bytes into the mapping (which starts at an aligned offset).
    delta = fm.offset % mmap.ALLOCATIONGRANULARITY
    first = delta + start * row_bytes
    last = delta + stop * row_bytes
    # Whole pages only: the rows around the block may still be read.
    page = mmap.PAGESIZE
    first = -(-first // page) * page
    last = last // page * page
    if last > first:
        try:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)
        except (OSError, ValueError, AttributeError):  # not supported here: keep the pages
            pass


def kwx_views(model) -> tuple[KwxPlane, KwxPlane]:
    """Lazy float32 ``(features, masks)`` of the current channel group of a `KwikModel`."""
    fm = model.features_masks
    if fm is None:
        raise MaskedEMError(f"{model.kwx_path}: no features and masks to cluster.")
    where = f"{model.kwx_path}:/channel_groups/{model.channel_group}/features_masks"
    nfpc = int(model.n_features_per_channel)
    return KwxPlane(fm, 0, 1, where), KwxPlane(fm, 1, nfpc, where)


# -- Checkpoints ------------------------------------------------------------------------


def checkpoint_path(kwik_path: str | os.PathLike, channel_group: int) -> Path:
    """Where the checkpoint of `channel_group` of a Kwik file is kept."""
    kwik_path = Path(kwik_path)
    return kwik_path.with_name(f"{kwik_path.stem}.cluster-auto.{int(channel_group)}"
                               f"{CHECKPOINT_SUFFIX}")


def find_checkpoints(kwik_path: str | os.PathLike) -> list[Path]:
    """The cluster-auto checkpoints of a Kwik file (any channel group)."""
    kwik_path = Path(kwik_path)
    return sorted(kwik_path.parent.glob(f"{kwik_path.stem}.cluster-auto.*{CHECKPOINT_SUFFIX}"))


def checkpointed_groups(kwik_path: str | os.PathLike) -> list[int]:
    """The channel groups of a Kwik file that have a cluster-auto checkpoint."""
    groups = []
    for path in find_checkpoints(kwik_path):
        group = path.name[:-len(CHECKPOINT_SUFFIX)].rsplit(".", 1)[-1]
        if group.isdigit() and path == checkpoint_path(kwik_path, int(group)):
            groups.append(int(group))
    return sorted(groups)


def input_identity(model, parameters: dict) -> dict:
    """What a checkpoint must match to be resumed: the data and the parameters."""
    stat = os.stat(model.kwx_path)
    fm = model.features_masks
    return dict(version=_CHECKPOINT_VERSION, channel_group=int(model.channel_group),
                n_spikes=int(fm.shape[0]), n_columns=int(fm.shape[1]),
                n_fitted=n_fitted(int(fm.shape[0]), parameters.get("max_spikes")),
                parameters=json.loads(json.dumps(parameters, sort_keys=True, default=_plain)),
                kwx_size=int(stat.st_size), kwx_mtime_ns=int(stat.st_mtime_ns))


def _plain(value: Any) -> Any:
    # numpy scalars and arrays (Kwik metadata) as the Python values a PRM gives.
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else str(value)


def save_checkpoint(path: Path, identity: dict, iteration: int, labels: np.ndarray,
                    complete: bool = False) -> None:
    """Write a checkpoint atomically (the previous one stays valid until the rename)."""
    from phy_core.atomic import atomic_writer

    labels = np.asarray(labels)
    small = labels.size == 0 or int(labels.max()) < 2 ** 31
    with atomic_writer(path, "wb") as f:
        np.savez(f, labels=labels.astype(np.int32 if small else np.int64),
                 iteration=np.int64(iteration), complete=np.bool_(complete),
                 identity=np.array(json.dumps(identity, sort_keys=True)))


def load_checkpoint(path: Path, identity: dict) -> dict | None:
    """The checkpoint at `path` if it was made for `identity`; else None (with a warning)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = json.loads(str(npz["identity"]))
            labels = np.asarray(npz["labels"], dtype=np.int64)
            iteration, complete = int(npz["iteration"]), bool(npz["complete"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is ignored the same way
        logger.warning("%s: unreadable checkpoint (%s: %s); ignoring it.", path,
                       type(exc).__name__, exc)
        return None
    different = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
    # A finished run saved the labels of every spike, a running one those of the spikes
    # the model is fitted on (`loop.fitted_rows`).
    length = identity["n_spikes"] if complete else identity.get("n_fitted", identity["n_spikes"])
    if different or labels.shape != (length,):
        if "parameters" in different:
            keys = sorted(k for k in set(stored.get("parameters", {})) | set(identity["parameters"])
                          if stored.get("parameters", {}).get(k) != identity["parameters"].get(k))
            different.remove("parameters")
            different.append(f"parameters ({', '.join(keys)})")
        logger.warning("%s: checkpoint of another input (different %s); ignoring it and "
                       "starting over.", path, ", ".join(different) or "labels")
        return None
    return dict(labels=labels, iteration=iteration, complete=complete)


class _Checkpointer:
    """The `on_iteration` callback: saves the labels every `every_s` seconds and at the end.

    A checkpoint that cannot be written (a read-only folder, a full disk) is
    reported once and the clustering goes on without checkpoints.
    """

    def __init__(self, path: Path, identity: dict, every_s: float, last_iteration: int) -> None:
        self.path, self.identity = path, identity
        self.every_s, self.last_iteration = float(every_s), int(last_iteration)
        self._last_save = time.monotonic()
        self.enabled = True

    def __call__(self, iteration: int, labels: np.ndarray) -> None:
        if (iteration >= self.last_iteration
                or time.monotonic() - self._last_save >= self.every_s):
            self.save(iteration, labels)
            self._last_save = time.monotonic()

    def save(self, iteration: int, labels: np.ndarray, complete: bool = False) -> None:
        if not self.enabled:
            return
        try:
            save_checkpoint(self.path, self.identity, iteration, labels, complete=complete)
        except OSError as exc:
            self.enabled = False
            logger.warning("%s: cannot save the progress (%s); going on without checkpoints "
                           "(an interruption will restart from the beginning).", self.path, exc)
            return
        logger.debug("Checkpoint at iteration %d: %s.", iteration, self.path)


# -- Clustering a Kwik file --------------------------------------------------------------


def _free_name(existing, base: str) -> str:
    name, i = base, 2
    while name in existing:
        name, i = f"{base}_{i}", i + 1
    return name


def kwik_parameters(model, overrides: dict | None = None) -> dict:
    """The parameters of a Kwik file (defaults < its klustakwik2 metadata < `overrides`)."""
    p = dict(DEFAULT_PARAMETERS)
    try:
        stored = dict(model.kk2_metadata or {})
    except Exception:  # noqa: BLE001 - metadata is optional
        stored = {}
    p.update({k: v for k, v in stored.items() if k in DEFAULT_PARAMETERS})
    p.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return p


def cluster_kwik(path, channel_group: int | None = None, clustering_name: str = "main",
                 reporter=None, *, parameters: dict | None = None, restart: bool = False,
                 checkpoint_every_s: float = CHECKPOINT_EVERY_S) -> dict:
    """Cluster a channel group of a Kwik file in place, resuming an interrupted run.

    Parameters
    ----------
    path : path
        The ``.kwik`` file (its ``.kwx`` beside it).
    channel_group : int or None
        Default: the first.
    clustering_name : str
        The clustering written (``main``); a previous one of that name is kept
        under a free ``<name>_previous*`` name.
    reporter : ProgressReporter or None
        One step per iteration.
    parameters : dict or None
        Override the stored / default KlustaKwik 2 parameters.
    restart : bool
        Ignore a checkpoint of an interrupted run.
    checkpoint_every_s : float
        Minimum time between two checkpoints.

    Returns
    -------
    dict
        ``n_clusters``, ``n_spikes``, ``previous`` (the name the previous
        clustering was kept under, or None), ``channel_group``, and
        ``resumed_at`` (the iteration resumed at, or None).
    """
    from phy_kwik.model import KwikModel

    with KwikModel(path, channel_group=channel_group) as model:
        group = int(model.channel_group)
        if model.n_spikes == 0:
            logger.info("%s: no spikes in channel group %d, nothing to cluster.", path, group)
            return dict(n_clusters=0, previous=None, n_spikes=0, channel_group=group,
                        resumed_at=None)
        features, masks = kwx_views(model)
        p = kwik_parameters(model, parameters)
        identity = input_identity(model, p)
        ckpt_path = checkpoint_path(model.kwik_path, group)
        state = None if restart else load_checkpoint(ckpt_path, identity)
        resumed_at = None
        if state is not None and state["complete"]:
            resumed_at = int(state["iteration"])
            logger.info("Masked EM had finished (checkpoint %s); saving its result.", ckpt_path)
            spike_clusters = state["labels"]
        else:
            kwargs: dict[str, Any] = {}
            if state is not None:
                resumed_at = kwargs["start_iteration"] = int(state["iteration"]) + 1
                kwargs["initial_labels"] = state["labels"]
                logger.info("Resuming masked EM at iteration %d (checkpoint %s).", resumed_at,
                            ckpt_path)
            checkpointer = _Checkpointer(ckpt_path, identity, checkpoint_every_s,
                                         int(p["max_iterations"]) - 1)
            spike_clusters = masked_em(features, masks, p, reporter, on_iteration=checkpointer,
                                       **kwargs)
            # The result itself is checkpointed: an interruption while it is written into
            # the Kwik file does not cost the clustering.
            checkpointer.save(checkpointer.last_iteration, spike_clusters, complete=True)
        previous = _save(model, clustering_name, spike_clusters)
        n_spikes = int(model.n_spikes)
    _remove_checkpoint(ckpt_path)
    return dict(n_clusters=len(np.unique(spike_clusters)), previous=previous, n_spikes=n_spikes,
                channel_group=group, resumed_at=resumed_at)


def _remove_checkpoint(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("%s: cannot delete this checkpoint (%s); delete it, or the next run "
                       "saves the same result again.", path, exc)


def _save(model, clustering_name: str, spike_clusters: np.ndarray) -> str | None:
    """Save as `clustering_name`, keeping a previous clustering of that name; its new name."""
    if clustering_name not in model.clusterings:
        model.add_clustering(clustering_name, spike_clusters, _groups(spike_clusters))
        return None
    previous = _free_name(model.clusterings, f"{clustering_name}_previous")
    model.copy_clustering(clustering_name, previous)
    if model.clustering != clustering_name:
        model.clustering = clustering_name
    model.save(spike_clusters, _groups(spike_clusters))
    return previous


def _groups(spike_clusters: np.ndarray) -> dict[int, int]:
    # 0 noise and 1 MUA are the special clusters of the algorithm; the others unsorted.
    return {int(c): (int(c) if c < 2 else 3) for c in np.unique(spike_clusters)}


def make_reporter(channel_group: int | None = None, reporter=None):
    """A `ProgressReporter` (`reporter`, or a new one) with the masked EM's messages."""
    from phy_core.progress import ProgressReporter

    where = "" if channel_group is None else f" (channel group {channel_group})"
    reporter = reporter if reporter is not None else ProgressReporter()
    reporter.set_progress_message(
        f"Masked EM{where}: {{progress:.0f}}% (iteration {{value}} of at most {{value_max}})")
    reporter.set_complete_message(f"Masked EM{where} done.")
    return reporter


def run(args, services) -> int:
    from phy_core.progress import show_progress

    path = Path(args.path)
    if not path.exists():
        raise MaskedEMError(f"{path}: no such file.")
    if not args.checkpoint_every >= 0:
        raise MaskedEMError(f"--checkpoint-every must be >= 0 seconds, got "
                            f"{args.checkpoint_every!r}.")
    reporter = make_reporter()
    with show_progress(reporter):
        info = cluster_kwik(path, args.channel_group, args.clustering_name, reporter,
                            restart=args.restart, checkpoint_every_s=args.checkpoint_every)
    previous = (f"; previous clustering kept as {info['previous']!r}"
                if info["previous"] else "")
    logger.info("%s: %d spikes in %d clusters saved as %r%s.", path, info["n_spikes"],
                info["n_clusters"], args.clustering_name, previous)
    return 0
