"""``phy evaluate SORTING GROUND_TRUTH``: the accuracy of a sorting against a known answer.

SORTING is any dataset phy opens (through the reader hook); GROUND_TRUTH is a
``.groundtruth.npz`` (as written by ``phy_synthetic``), or a ``.prm`` whose
``<experiment_name>.groundtruth.npz`` sits beside it. The numbers are defined
in `phy_evaluate.metrics`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.bunch import Bunch
from phy_core.descriptors import Command, Services
from phy_core.errors import PhyError

from .metrics import SNR_THRESHOLDS, EvaluationError, evaluate

GROUNDTRUTH_SUFFIX = ".groundtruth.npz"


class GroundTruthError(PhyError, ValueError):
    """A ground-truth file that cannot be used."""


def ground_truth_path(path: str | os.PathLike) -> Path:
    """The ``.groundtruth.npz`` for `path` (itself, or the one beside a ``.prm``)."""
    path = Path(path)
    if path.name.endswith(".prm"):
        from phy_core.literals import read_literal_file

        values = read_literal_file(path, allowed_calls=("dict",))
        name = values.get("experiment_name", path.name[:-len(".prm")])
        if not isinstance(name, str) or not name:
            raise GroundTruthError(f"{path}: experiment_name must be a non-empty string, "
                                   f"got {name!r}.")
        gt = path.parent / f"{name}{GROUNDTRUTH_SUFFIX}"
        if not gt.is_file():
            raise GroundTruthError(f"{path}: no ground truth beside it (expected {gt}).")
        return gt
    if not path.is_file():
        raise GroundTruthError(f"{path}: no such file.")
    return path


def load_ground_truth(path: str | os.PathLike) -> Bunch:
    """Read and validate a ground truth (``.groundtruth.npz`` or its ``.prm``).

    Returns
    -------
    Bunch
        ``path``, ``spike_samples`` and ``spike_clusters`` (int64, the true
        units), ``unit_snr`` (float64, indexed by unit id), ``sample_rate``.

    Raises
    ------
    GroundTruthError
        The file is missing, not an ``.npz`` of plain arrays, lacks an array,
        or its arrays disagree (each problem named with expected vs found).
    """
    path = ground_truth_path(path)
    from phy_rawdata.groundtruth import read_ground_truth

    arrays = read_ground_truth(path, extra=("unit_snr", "sample_rate"), error=GroundTruthError)
    samples, clusters = arrays["spike_samples"], arrays["spike_clusters"]
    snr, rate = arrays["unit_snr"], arrays["sample_rate"]
    if snr.ndim != 1 or snr.dtype.kind not in "iuf":
        raise GroundTruthError(f"{path}: unit_snr must be a 1-D numeric array, found shape "
                               f"{snr.shape} and dtype {snr.dtype}.")
    if len(clusters) and (clusters.min() < 0 or clusters.max() >= len(snr)):
        raise GroundTruthError(f"{path}: unit ids span {clusters.min()} .. {clusters.max()}, "
                               f"but unit_snr has {len(snr)} values (one per unit id).")
    if rate.shape != () or rate.dtype.kind not in "iuf" or not (
            math.isfinite(float(rate)) and float(rate) > 0):
        raise GroundTruthError(f"{path}: sample_rate must be a positive number, found "
                               f"{rate!r} (shape {rate.shape}, dtype {rate.dtype}).")
    return Bunch(path=path, spike_samples=samples, spike_clusters=clusters,
                 unit_snr=snr.astype(np.float64), sample_rate=float(rate))


def _sorted_spikes(model: Any) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(model.spike_samples)
    if samples.dtype.kind == "f":  # some readers keep fractional samples
        samples = np.rint(samples)
    return samples.astype(np.int64), np.asarray(model.spike_clusters).astype(np.int64)


def _table(result: Bunch) -> list[str]:
    # By SNR, strongest first (units without an SNR last), then by unit id.
    snr = np.nan_to_num(result.snr, nan=-np.inf)
    order = np.lexsort((result.units, -snr))
    lines = [f"{'unit':>6} {'SNR':>6} {'spikes':>8} {'cluster':>8} {'accuracy':>9} "
             f"{'recall':>7} {'precision':>9}"]
    for k in order:
        cluster = result.matched_cluster[k]
        lines.append(
            f"{result.units[k]:>6} {result.snr[k]:>6.1f} {result.n_spikes[k]:>8} "
            f"{cluster if cluster >= 0 else '-':>8} {result.accuracy[k]:>9.3f} "
            f"{result.recall[k]:>7.3f} {result.precision[k]:>9.3f}"
        )
    return lines


def _percent(n: int, total: int) -> str:
    return f"{n} / {total} ({100.0 * n / total:.0f}%)" if total else f"{n} / 0"


def summary_lines(result: Bunch) -> list[str]:
    """The summary printed under the table."""
    s = result.summary
    thr = f"{s.accuracy_threshold:g}"
    lines = [
        f"True units: {s.n_units}, sorted clusters: {s.n_clusters}, tolerance "
        f"{s.tolerance_ms:g} ms ({result.tolerance_samples} samples).",
        f"Units at accuracy >= {thr}: {_percent(s.n_accurate, s.n_units)}; "
        f"mean accuracy {s.mean_accuracy:.3f}.",
    ]
    for threshold in SNR_THRESHOLDS:
        key = f"snr_{threshold:g}"
        if f"n_units_{key}" in s:
            lines.append(f"Units with SNR >= {threshold:g} at accuracy >= {thr}: "
                         f"{_percent(s[f'n_accurate_{key}'], s[f'n_units_{key}'])}.")
    if "n_false_good" in s:
        ids = ", ".join(map(str, s.false_good_clusters[:20]))
        more = " ..." if len(s.false_good_clusters) > 20 else ""
        if not s.n_good:
            lines.append("False units among the good clusters: none (no cluster is labelled "
                         "good).")
        else:
            lines.append(f"False units among the good clusters (no true unit at accuracy >= "
                         f"0.5): {s.n_false_good} of {s.n_good}"
                         + (f" ({ids}{more})." if ids else "."))
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        # Strict JSON has no NaN.
        return float(value) if math.isfinite(value) else None
    return value


def result_json(result: Bunch, sorting: str, ground_truth: str) -> str:
    """The numbers of an evaluation as a JSON document."""
    units = [
        {"unit": result.units[k], "snr": result.snr[k], "n_spikes": result.n_spikes[k],
         "matched_cluster": result.matched_cluster[k], "accuracy": result.accuracy[k],
         "recall": result.recall[k], "precision": result.precision[k]}
        for k in range(len(result.units))
    ]
    doc = {"sorting": sorting, "ground_truth": ground_truth,
           "tolerance_samples": result.tolerance_samples,
           "summary": dict(result.summary), "units": units}
    return json.dumps(_jsonable(doc), indent=2) + "\n"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sorting", help="the sorted dataset (any path phy can open)")
    parser.add_argument("ground_truth",
                        help="a .groundtruth.npz, or a .prm with one beside it")
    parser.add_argument("--tolerance-ms", type=float, default=0.4,
                        help="spikes match within this many ms (default 0.4)")
    parser.add_argument("--json", default=None, metavar="OUT.json",
                        help="also write the numbers to this JSON file")
    parser.add_argument("--channel-group", type=int, default=None, help="channel group (shank)")
    parser.add_argument("--clustering", default=None, help="clustering name (default: main)")


def _run(args: argparse.Namespace, services: Services) -> int:
    from phy_commands.commands import open_model
    from phy_core.atomic import atomic_write

    gt = load_ground_truth(args.ground_truth)
    model = open_model(services, args.sorting, channel_group=args.channel_group,
                       clustering=args.clustering)
    try:
        sample_rate = float(model.sample_rate)
        if not math.isclose(sample_rate, gt.sample_rate, rel_tol=1e-9):
            raise EvaluationError(f"{args.sorting} is sampled at {sample_rate:g} Hz but the "
                                  f"ground truth {gt.path} at {gt.sample_rate:g} Hz.")
        samples, clusters = _sorted_spikes(model)
        groups = dict(model.cluster_groups or {})
    finally:
        model.close()
    result = evaluate(gt.spike_samples, gt.spike_clusters, samples, clusters, sample_rate,
                      tolerance_ms=args.tolerance_ms, unit_snr=gt.unit_snr,
                      cluster_groups=groups)
    print("\n".join(_table(result) + [""] + summary_lines(result)))
    if args.json:
        atomic_write(args.json, result_json(result, str(args.sorting), str(gt.path)))
    return 0


evaluate_command = Command(
    name="evaluate",
    help="accuracy of a sorting against a ground truth (matched spikes, Hungarian method)",
    run=_run,
    add_arguments=_add_arguments,
)
