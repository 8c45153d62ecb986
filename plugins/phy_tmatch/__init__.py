"""Template matching: re-detect a sorting's spikes against each unit's mean waveform.

A stage after automatic clustering: one template per cluster (its mean filtered
waveform, sparse and low rank), then a greedy matching pursuit over the whole
recording that resolves overlapping spikes and finds spikes below the detection
threshold; optionally (``refine_rounds``) a refinement of the templates between
matching passes: splits, new templates from the residual, merges (`refine`,
`residual`). ``phy template-match params.prm FILE.kwik --output-dir DIR`` writes
a template directory (Kilosort / phy 2 layout).

Hooks only here: the work is in the submodules (`templates`, `kernels`,
`matching`, `residual`, `refine` with `groups`, `snippet_whitener`, `split`,
`comparison`, `amplitude` and `merging`, `worker`, `runner`, `output`), imported
when it runs.
"""

from __future__ import annotations

from phy_core import hookimpl


def template_match(prm_path, kwik_path, output_dir, **kwargs):
    """See `phy_tmatch.runner.template_match`."""
    from .runner import template_match as run

    return run(prm_path, kwik_path, output_dir, **kwargs)


@hookimpl(trylast=True)
def phy_commands():
    from .command import template_match_command

    return [template_match_command]
