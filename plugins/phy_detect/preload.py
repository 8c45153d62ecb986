"""Imported once by the forkserver of `executors.ProcessExecutor`, to start workers warm.

Every local worker process used to import numpy, numba and the detection
modules, and load each numba kernel from its on-disk cache, by itself: about
1 s of CPU per worker, on the cores the run needs. The forkserver does it
once, here, and forks the workers from that state (copy on write): a worker
starts with the kernels loaded, and its own warm-up (`worker.warm_up`, which
also opens the recording) finds them so. Best effort: an error here only
leaves the workers to load what they use, as before.

Nothing here starts a thread (no parallel numba kernel, no numba thread pool):
the forkserver must be single-threaded when it forks.
"""

from __future__ import annotations

import contextlib

#: What the built-in stages are warmed up with: the runner's defaults (the kernels
#: depend on the types, not on these values).
BUILTIN_STAGES = {
    "filter": ("butterworth", {"rate": 30000.0, "low": 500.0, "high": 14250.0, "order": 3,
                               "precision": "float32"}),
    "threshold": ("mad", {"mode": "negative"}),
    "detector": ("floodfill", {"join_size": 1}),
    "extractor": ("centroid", {"extract_before": 10, "extract_after": 10,
                               "weight_power": 2.0}),
}


#: What `preload` warmed up (`BUILTIN_STAGES`), once it succeeded: a worker forked from
#: here whose run asks for the same (`worker.warm_up`) has nothing left to load.
WARMED: dict | None = None


def builtin_factories(stages: dict) -> dict:
    """`stages` (kind -> (name, arguments)) with each name replaced by the factory of the
    built-in stage of that name: no plugin manager (no entry points read, no plugin
    imported). KeyError if a name is not a built-in stage."""
    from . import phy_register_stages

    builtin = {(stage.kind, stage.name): stage.factory for stage in phy_register_stages()}
    return {kind: (builtin[kind, name], arguments) for kind, (name, arguments) in stages.items()}


def preload() -> None:
    """Import the worker's modules and load the built-in stages' kernels (best effort)."""
    global WARMED
    with contextlib.suppress(Exception):
        from . import worker

        worker._warm_up_stages(builtin_factories(BUILTIN_STAGES))
        WARMED = BUILTIN_STAGES
    with contextlib.suppress(Exception):  # the local reference's kernel (an optional stage)
        from . import reference

        reference.warm_up()


preload()
