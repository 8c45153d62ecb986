"""Ground-truth files (``<name>.groundtruth.npz``, written by ``phy synth``): read and checked.

The raw-data reader and ``phy evaluate`` both read them; each adds its own
checks (against the recording's length, against the units' SNR) on top of
the ones here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from .dat import RawDataError


def read_ground_truth(path: str | os.PathLike, extra: Iterable[str] = (),
                      error: type[Exception] = RawDataError) -> dict[str, np.ndarray]:
    """The arrays of a ground-truth ``.npz``, never unpickling anything.

    Parameters
    ----------
    path : path
    extra : names of further arrays that must be present (returned as stored).
    error : the exception class to raise (the caller's own error type).

    Returns
    -------
    arrays : dict
        ``spike_samples`` and ``spike_clusters`` as int64 (1-D, same length),
        and the `extra` arrays.

    Raises
    ------
    error
        The file is missing or not an ``.npz`` of plain arrays, an array is
        missing, or the spike arrays are not 1-D integers of one length.
    """
    required = ("spike_samples", "spike_clusters", *extra)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise error(f"{path}: a single .npy array, not an .npz archive.")
        with npz:
            missing = [k for k in required if k not in npz.files]
            if missing:
                raise error(f"{path}: missing array(s) {', '.join(missing)} "
                            f"(found: {', '.join(npz.files) or 'none'}).")
            arrays = {k: npz[k] for k in required}
    except error:
        raise
    except Exception as exc:  # BadZipFile, ValueError (pickled objects), OSError, ...
        raise error(f"{path}: cannot be read as a ground-truth .npz "
                    f"({type(exc).__name__}: {exc}).") from None
    for name in ("spike_samples", "spike_clusters"):
        array = arrays[name]
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise error(f"{path}: {name} must be a 1-D integer array, found "
                        f"shape {array.shape} and dtype {array.dtype}.")
        arrays[name] = array.astype(np.int64)
    n_samples, n_clusters = len(arrays["spike_samples"]), len(arrays["spike_clusters"])
    if n_samples != n_clusters:
        raise error(f"{path}: {n_samples} spike_samples but {n_clusters} spike_clusters.")
    return arrays
