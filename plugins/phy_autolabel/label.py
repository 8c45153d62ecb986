"""Label the clusters of a sorting "good" automatically, and save the labels.

`label_clusters(path)` opens a Kwik file (every channel group, or one) or a
template directory, computes the quality metrics of every cluster
(`phy_autolabel.quality`), applies the rule (`phy_autolabel.rule`) and saves
the groups:

- *What changes.* An unsorted cluster (group 3, or none) that passes the rule
  becomes good (2). A cluster labelled good by an earlier run of this tool
  (its label ``autolabel`` is ``good``) is decided again: good if it passes,
  else unsorted. Every other label (noise, MUA, and good set by hand) is
  kept, so are the masked EM's noise and MUA clusters; with
  ``overwrite_labels=True`` every cluster is decided again: a cluster that
  passes becomes good, a good one that fails becomes unsorted, noise and MUA
  clusters that fail stay as they are.
- *Where it goes.* Kwik: the groups and the ``autolabel`` label of the
  ``main`` clustering of each channel group, through `KwikModel.save` (the
  new clustering is written in full, then swapped in; the previous one is
  kept as ``main_backup``). Template directory: ``cluster_group.tsv`` and
  ``cluster_autolabel.tsv``, each written atomically (temporary file, fsync,
  rename). The spike assignments are never changed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phy_core.errors import PhyError

from .quality import METRIC_COLUMNS, ClusterQuality, MetricParameters, compute_quality
from .rule import GoodRule
from .sources import NoiseCache, SortingSource

logger = logging.getLogger("phy")

GOOD, UNSORTED = 2, 3
GROUP_NAMES = {0: "noise", 1: "mua", 2: "good", 3: "unsorted"}
#: The label marking the clusters this tool made good (so that a later run may revisit them).
AUTO_LABEL = "autolabel"


class AutoLabelError(PhyError, ValueError):
    """The sorting cannot be labelled (unknown format, bad parameters)."""


@dataclass
class GroupLabels:
    """The outcome for one channel group (or a template directory)."""

    path: Path
    channel_group: int | None
    quality: dict[int, ClusterQuality]
    old_groups: dict[int, int]
    new_groups: dict[int, int]
    failures: dict[int, list[str]] = field(default_factory=dict)

    @property
    def good(self) -> list[int]:
        """Clusters in the good group after labelling."""
        return sorted(c for c, g in self.new_groups.items() if g == GOOD)

    @property
    def changed(self) -> list[int]:
        return sorted(c for c in self.new_groups if self.new_groups[c] != self.old_groups[c])

    def table(self) -> str:
        """The metrics, old and new group, and why each cluster is not good."""
        names = [name for name, _ in METRIC_COLUMNS]
        widths = [max(len(n), 8) for n in names]
        head = (f"{'cluster':>7} " + " ".join(f"{n:>{w}}" for n, w in zip(names, widths))
                + f" {'group':>18}  why not good")
        lines = [head]
        for c, q in sorted(self.quality.items()):
            values = q.as_dict()
            cells = []
            for (name, fmt), w in zip(METRIC_COLUMNS, widths):
                v = values[name]
                bad = v is None or (isinstance(v, float) and not math.isfinite(v))
                cells.append(f"{(str(v) if bad else fmt.format(v)):>{w}}")
            old, new = GROUP_NAMES.get(self.old_groups[c], str(self.old_groups[c])), \
                GROUP_NAMES.get(self.new_groups[c], str(self.new_groups[c]))
            group = new if old == new else f"{old} -> {new}"
            why = "; ".join(self.failures.get(c, []))
            lines.append(f"{c:>7} " + " ".join(cells) + f" {group:>18}  {why}")
        return "\n".join(lines)


def decide_groups(quality: dict[int, ClusterQuality], groups: dict[int, int],
                  auto_labels: dict[int, object], rule: GoodRule,
                  overwrite_labels: bool = False) -> tuple[dict[int, int], dict[int, list]]:
    """New groups from the metrics (see the module docstring for what may change).

    Returns ``(new_groups, failures)``: ``failures[c]`` lists why cluster c is not good.
    """
    new_groups, failures = {}, {}
    for c, q in quality.items():
        old = int(groups.get(c, UNSORTED))
        why = rule.failures(q)
        failures[c] = why
        ours = str(auto_labels.get(c, "")) == "good"
        if old == UNSORTED or (old == GOOD and (ours or overwrite_labels)):
            new_groups[c] = UNSORTED if why else GOOD
        elif overwrite_labels and not why:
            new_groups[c] = GOOD
        else:
            new_groups[c] = old
    return new_groups, failures


def _label_model(model, rule, parameters, overwrite_labels, reporter, noise_cache=None,
                 quality=None):
    if quality is None:
        source = SortingSource(model, noise_cache=noise_cache)
        quality = compute_quality(source, parameters=parameters, reporter=reporter)
    else:
        _check_quality(model, quality)
    groups = {int(c): int(g) for c, g in (getattr(model, "cluster_groups", None) or {}).items()}
    labels = _model_labels(model)
    new_groups, failures = decide_groups(quality, groups, labels.get(AUTO_LABEL, {}), rule,
                                         overwrite_labels)
    old_groups = {c: int(groups.get(c, UNSORTED)) for c in quality}
    return quality, old_groups, new_groups, failures, labels


def _cluster_sizes(model) -> dict[int, int]:
    ids, counts = np.unique(np.asarray(model.spike_clusters), return_counts=True)
    return {int(c): int(n) for c, n in zip(ids, counts)}


def _check_quality(model, quality: dict) -> None:
    """Raise `AutoLabelError` unless `quality` has the clusters of `model`, of these sizes."""
    if _cluster_sizes(model) != {c: int(q.n_spikes) for c, q in quality.items()}:
        raise AutoLabelError(f"{getattr(model, 'path', 'the sorting')}: the clusters or their "
                             "spikes changed since the metrics were computed; label it again.")


def quality_share(path, part: int, n_parts: int, *, parameters: MetricParameters | None = None,
                  channel_group: int | None = None,
                  noise_cache: NoiseCache | None = None) -> dict[int, ClusterQuality]:
    """The metrics of one share of the clusters of a sorting: every `n_parts`-th cluster
    (in id order) from the `part`-th.

    Each cluster's metrics depend only on the sorting, not on which others are computed
    with it: `n_parts` processes compute the shares, and `label_clusters` (its `quality`
    argument) decides and saves with the shares merged, the same numbers as computed in
    one process. `path`: as for `label_clusters` (one channel group of a Kwik file).
    """
    _, openers = _open(Path(path), channel_group)
    if len(openers) != 1:
        raise AutoLabelError(f"{path}: several channel groups; choose one.")
    model = openers[0][1]()
    try:
        source = SortingSource(model, noise_cache=noise_cache)
        return compute_quality(source, cluster_ids=source.cluster_ids[part::n_parts],
                               parameters=parameters or MetricParameters())
    finally:
        model.close()


def _model_labels(model) -> dict[str, dict[int, object]]:
    labels = getattr(model, "cluster_labels", None)
    if labels is None:
        labels = getattr(model, "labels", None) or {}
    return {str(k): {int(c): v for c, v in values.items()} for k, values in labels.items()}


def auto_marks(result: GroupLabels, previous: dict[int, object]) -> dict[int, str]:
    """The ``autolabel`` values after a run: ``good`` on the clusters this tool made good.

    Those it makes good now, and those it had made good before that stay good; a
    cluster labelled good by hand is not marked.
    """
    return {c: "good" for c, g in result.new_groups.items()
            if g == GOOD and (result.old_groups[c] != GOOD or str(previous.get(c, "")) == "good")}


def _save_kwik(model, result: GroupLabels, labels: dict, marks: dict[int, str]) -> None:
    new_labels = {k: v for k, v in labels.items() if k != AUTO_LABEL}
    new_labels[AUTO_LABEL] = marks
    groups = dict(model.cluster_groups)
    groups.update(result.new_groups)
    model.save(np.asarray(model.spike_clusters), groups, labels=new_labels)


def _save_template(model, result: GroupLabels, labels: dict, marks: dict[int, str]) -> None:
    from phy_template.tsv import group_values, write_cluster_tsv

    groups = dict(model.cluster_groups)
    groups.update(result.new_groups)
    # The marks first: an interruption between the two files leaves the groups as they
    # were, and a later run decides again.
    write_cluster_tsv(model.path / f"cluster_{AUTO_LABEL}.tsv", AUTO_LABEL, marks)
    write_cluster_tsv(model.path / "cluster_group.tsv", "group", group_values(groups))


def _open(path: Path, channel_group: int | None):
    """``(kind, [models])`` for a Kwik file (one model per channel group) or template dir."""
    if path.suffix == ".kwik":
        from phy_kwik.model import KwikModel, kwik_channel_groups

        groups = kwik_channel_groups(path)
        if channel_group is not None:
            if channel_group not in groups:
                raise AutoLabelError(f"{path}: no channel group {channel_group}; available: "
                                     f"{groups}.")
            groups = [channel_group]
        return "kwik", [(g, lambda g=g: KwikModel(path, channel_group=g, clustering="main"))
                        for g in groups]
    directory = path.parent if path.name == "params.py" else path
    if (directory / "params.py").is_file():
        from phy_template.model import TemplateModel

        return "template", [(None, lambda: TemplateModel(directory))]
    raise AutoLabelError(f"{path}: neither a .kwik file nor a template directory "
                         "(a folder with params.py and spike_times.npy).")


def label_clusters(path, *, rule: GoodRule | None = None,
                   parameters: MetricParameters | None = None,
                   channel_group: int | None = None, overwrite_labels: bool = False,
                   dry_run: bool = False, reporter=None,
                   noise_cache: NoiseCache | None = None,
                   quality: dict[int, ClusterQuality] | None = None) -> list[GroupLabels]:
    """Compute the quality metrics of a sorting, label the clear single units good, save.

    Parameters
    ----------
    path : path
        A ``.kwik`` file (its ``main`` clustering) or a template directory
        (or its ``params.py``).
    rule : GoodRule or None
        The thresholds (default `GoodRule()`).
    parameters : MetricParameters or None
        How the metrics are computed (default `MetricParameters()`, e.g. a
        1.5 ms refractory period).
    channel_group : int or None
        Kwik only: this channel group (default: all).
    overwrite_labels : bool
        Decide every cluster again, including those labelled by hand (see
        the module docstring).
    dry_run : bool
        Compute and decide, save nothing.
    reporter : ProgressReporter or None
        Advanced once per cluster.
    noise_cache : NoiseCache or None
        Noise estimates shared between calls on sortings of the same recording
        (a Kwik file and its template directory), each estimated once.
    quality : dict or None
        The metrics of every cluster, computed elsewhere (`quality_share`:
        e.g. by worker processes, each a share of the clusters), of one
        sorting (a template directory, or a Kwik file's `channel_group`):
        used instead of computing them. `AutoLabelError` if they are not
        those of the sorting's clusters.

    Returns
    -------
    results : list of GroupLabels
        One per channel group (one for a template directory).
    """
    rule = rule or GoodRule()
    parameters = parameters or MetricParameters()
    path = Path(path)
    if not path.exists():
        raise AutoLabelError(f"{path}: no such file or directory.")
    kind, openers = _open(path, channel_group)
    if quality is not None and len(openers) != 1:
        raise AutoLabelError(f"{path}: metrics given for several channel groups; choose one.")
    results = []
    for group, open_model in openers:
        model = open_model()
        try:
            quality, old, new, failures, labels = _label_model(model, rule, parameters,
                                                              overwrite_labels, reporter,
                                                              noise_cache, quality)
            result = GroupLabels(path=path, channel_group=group, quality=quality,
                                 old_groups=old, new_groups=new, failures=failures)
            if not dry_run:
                _save_result(kind, model, result, labels)
            results.append(result)
        finally:
            model.close()
    return results


def _save_result(kind: str, model, result: GroupLabels, labels: dict) -> None:
    """Save `result` in `model` if it changes a group or an ``autolabel`` mark."""
    previous = labels.get(AUTO_LABEL, {})
    marks = auto_marks(result, previous)
    stale = marks != {c: str(v) for c, v in previous.items() if str(v) == "good"}
    if result.changed or stale:
        save = _save_kwik if kind == "kwik" else _save_template
        save(model, result, labels, marks)


def save_labels(results: list[GroupLabels]) -> None:
    """Save labels decided earlier (`label_clusters` with ``dry_run=True``).

    What a dry run decides depends on the groups it read: `phy spikesort`
    computes the labels of a Kwik file in a worker process while the template
    matching runs, and saves them here afterwards. A sorting whose groups
    changed in between (other clusters, spike counts or groups) is an error
    (label it again instead).

    Raises
    ------
    AutoLabelError
        When a sorting's groups are not those the labels were decided from.
    """
    for result in results:
        kind, openers = _open(Path(result.path), result.channel_group)
        (_, open_model), = openers
        model = open_model()
        try:
            groups = {int(c): int(g)
                      for c, g in (getattr(model, "cluster_groups", None) or {}).items()}
            now = {c: int(groups.get(c, UNSORTED)) for c in result.quality}
            _check_quality(model, result.quality)
            if now != result.old_groups:
                raise AutoLabelError(f"{result.path}: the groups changed since the labels "
                                     "were decided; label it again.")
            _save_result(kind, model, result, _model_labels(model))
        finally:
            model.close()
