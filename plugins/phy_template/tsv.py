"""Cluster metadata files of a template directory: ``cluster_<field>.tsv``.

Each file is a tab-separated table with a header line. phy 2 and Kilosort
write one field per file (``cluster_group.tsv`` holds ``cluster_id`` and
``group``; Kilosort adds ``cluster_KSLabel.tsv``, ``cluster_ContamPct.tsv``,
...); tables with several fields are read too. A value that looks like a
number is returned as an ``int`` or a ``float``, anything else as a string;
an empty cell means "no value" and is skipped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.atomic import atomic_writer
from phy_core.errors import PhyError
from phy_core.textfile import read_text

#: Group names of ``cluster_group.tsv`` and the group numbers phy uses.
GROUP_NAMES = ("noise", "mua", "good", "unsorted")
GROUP_IDS = {name: i for i, name in enumerate(GROUP_NAMES)}

# A field name becomes a file name: keep it to letters, digits and '_'.
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class TemplateFormatError(PhyError, ValueError):
    """A file of a template directory is missing, malformed, or inconsistent."""


def _parse_value(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    # 'nan'/'inf' stay strings: they are what a broken metric writes, not data.
    return value if math.isfinite(value) else text


def read_cluster_tsv(path: str | Path) -> dict[str, dict[int, Any]]:
    """Read a ``cluster_*.tsv`` table.

    Parameters
    ----------
    path : path
        The file.

    Returns
    -------
    fields : dict
        ``{field: {cluster_id: value}}`` for every column but ``cluster_id``.

    Raises
    ------
    TemplateFormatError
        If the file cannot be read, has no ``cluster_id`` column, a line with
        the wrong number of cells, a cluster id that is not a non-negative
        integer, or the same cluster twice (the message gives the line).
    """
    path = Path(path)
    lines = read_text(path, TemplateFormatError).splitlines()
    if not lines or not lines[0].strip():
        raise TemplateFormatError(
            f"{path}: empty file; expected a header line such as 'cluster_id<TAB>group'."
        )
    header = [cell.strip() for cell in lines[0].split("\t")]
    if "cluster_id" not in header:
        raise TemplateFormatError(
            f"{path}, line 1: the header {lines[0]!r} has no 'cluster_id' column "
            "(columns are separated by tabs)."
        )
    if len(set(header)) != len(header) or "" in header:
        raise TemplateFormatError(f"{path}, line 1: empty or repeated column names in {header}.")
    id_column = header.index("cluster_id")
    fields: dict[str, dict[int, Any]] = {name: {} for name in header if name != "cluster_id"}
    seen: set[int] = set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise TemplateFormatError(
                f"{path}, line {number}: {len(cells)} tab-separated cells, expected "
                f"{len(header)} ({', '.join(header)}): {line!r}."
            )
        raw_id = cells[id_column].strip()
        try:
            cluster_id = int(raw_id)
        except ValueError:
            raise TemplateFormatError(
                f"{path}, line {number}: the cluster id {raw_id!r} is not an integer."
            ) from None
        if cluster_id < 0:
            raise TemplateFormatError(
                f"{path}, line {number}: the cluster id {cluster_id} is negative."
            )
        if cluster_id in seen:
            raise TemplateFormatError(f"{path}, line {number}: cluster {cluster_id} repeated.")
        seen.add(cluster_id)
        for name, cell in zip(header, cells):
            if name != "cluster_id" and cell.strip():
                fields[name][cluster_id] = _parse_value(cell.strip())
    return fields


def groups_from_values(path: str | Path, values: Mapping[int, Any]) -> dict[int, int]:
    """Convert the group names of ``cluster_group.tsv`` to phy's group numbers.

    Raises
    ------
    TemplateFormatError
        For a value other than noise, mua, good, unsorted (case-insensitive).
    """
    groups = {}
    for cluster_id, value in values.items():
        name = str(value).strip().lower()
        if name not in GROUP_IDS:
            raise TemplateFormatError(
                f"{path}: cluster {cluster_id} has the group {value!r}; expected one of "
                f"{', '.join(GROUP_NAMES)}."
            )
        groups[cluster_id] = GROUP_IDS[name]
    return groups


def check_field_name(field: str) -> str:
    """Check that `field` can name a ``cluster_<field>.tsv`` file and a column."""
    if not isinstance(field, str) or not _FIELD.match(field) or field == "cluster_id":
        raise TemplateFormatError(
            f"{field!r} cannot be a cluster label name: use letters, digits and '_', "
            "starting with a letter (it becomes the file cluster_<name>.tsv)."
        )
    return field


def format_cluster_tsv(field: str, values: Mapping[int, Any]) -> str:
    """The text of a ``cluster_<field>.tsv`` file, rows sorted by cluster id."""
    check_field_name(field)
    rows = [f"cluster_id\t{field}"]
    for cluster_id in sorted(values):
        cell = str(values[cluster_id])
        if any(c in cell for c in "\t\r\n"):
            raise TemplateFormatError(
                f"cluster {cluster_id}: the {field} value {cell!r} contains a tab or a "
                "line break, which a .tsv file cannot hold."
            )
        rows.append(f"{int(cluster_id)}\t{cell}")
    return "\n".join(rows) + "\n"


def group_values(cluster_groups: Mapping[int, int]) -> dict[int, str]:
    """phy's group numbers as the names ``cluster_group.tsv`` holds."""
    out = {}
    for cluster_id, group in cluster_groups.items():
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)):
            raise TemplateFormatError(f"cluster {cluster_id}: group {group!r} is not 0..3.")
        if not 0 <= int(group) < len(GROUP_NAMES):
            raise TemplateFormatError(
                f"cluster {cluster_id}: group {group!r} is not one of 0 noise, 1 mua, 2 good, "
                "3 unsorted."
            )
        out[int(cluster_id)] = GROUP_NAMES[int(group)]
    return out


def write_cluster_tsv(path: str | Path, field: str, values: Mapping[int, Any]) -> None:
    """Write a one-field ``cluster_*.tsv`` file atomically."""
    text = format_cluster_tsv(field, values)
    with atomic_writer(path, "w") as f:
        f.write(text)
