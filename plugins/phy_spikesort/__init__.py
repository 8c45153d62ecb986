"""``phy spikesort PARAMS.prm``: spike detection then masked EM clustering, in one command.

Hooks only, plus `spikesort` for scripts: the pipeline (`pipeline.sort_recording`)
and the command are imported when they run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from phy_core import hookimpl


def spikesort(prm_path: str | os.PathLike, output_dir: str | os.PathLike | None = None,
              overwrite: bool = False, executor=None, **kwargs: Any) -> Path:
    """Detect and cluster the spikes of a recording; returns the ``.kwik`` path.

    Resumes an interrupted sort of the same recording unless `overwrite`;
    other keyword arguments as `phy_spikesort.pipeline.sort_recording`.
    """
    from .pipeline import sort_recording

    return sort_recording(prm_path, output_dir=output_dir, overwrite=overwrite,
                          executor=executor, **kwargs).kwik_path


@hookimpl(trylast=True)
def phy_commands():
    from .command import spikesort_command

    return [spikesort_command]
