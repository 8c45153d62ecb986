"""Per-cluster metadata: the cluster group and free labels.

`ClusterMetadata` is pure data. It knows nothing about spikes or history:
`phy_core.clustering.Clustering` records every change in its undo stack and
applies it through this class.

The field ``group`` is special: its values are the integers of `GROUP_NAMES`
(names are accepted case-insensitively and stored as integers), and an unset
cluster is `UNSORTED`. Any other field is a free label holding any JSON-able
value; an unset label is None.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

GROUP_NAMES: dict[int, str] = {0: "noise", 1: "mua", 2: "good", 3: "unsorted"}
UNSORTED: int = 3
GROUP_FIELD = "group"

_GROUP_IDS = {name: group for group, name in GROUP_NAMES.items()}


def normalize_group(group: int | str) -> int:
    """Return the integer group for a group name or integer.

    Parameters
    ----------
    group : int or str
        One of the integers of `GROUP_NAMES` or one of its names
        (case-insensitive), e.g. ``'good'``, ``'MUA'``, ``2``.

    Returns
    -------
    group : int

    Raises
    ------
    ValueError
        If the group is neither a known name nor a known integer.
    """
    if isinstance(group, str):
        key = group.strip().lower()
        if key in _GROUP_IDS:
            return _GROUP_IDS[key]
    # bool is an int subclass, but `True` as a group is surely a mistake.
    elif (
        isinstance(group, numbers.Integral)
        and not isinstance(group, (bool, np.bool_))
        and int(group) in GROUP_NAMES
    ):
        return int(group)
    known = ", ".join(f"{i} ({name!r})" for i, name in GROUP_NAMES.items())
    raise ValueError(f"Unknown cluster group {group!r}: expected one of {known}.")


def normalize_cluster_id(cluster: Any) -> int:
    """Return a cluster id as a Python int, or raise ValueError."""
    if (
        isinstance(cluster, numbers.Integral)
        and not isinstance(cluster, (bool, np.bool_))
        and int(cluster) >= 0
    ):
        return int(cluster)
    raise ValueError(f"Invalid cluster id {cluster!r}: expected a non-negative integer.")


def normalize_cluster_ids(cluster_ids: int | Iterable[int]) -> list[int]:
    """Return a sorted list of distinct cluster ids from an int or an iterable."""
    if isinstance(cluster_ids, numbers.Integral):
        cluster_ids = [cluster_ids]
    elif isinstance(cluster_ids, (str, bytes)) or not isinstance(cluster_ids, Iterable):
        raise ValueError(
            f"Invalid cluster ids {cluster_ids!r}: expected an integer or a list of integers."
        )
    return sorted({normalize_cluster_id(c) for c in np.asarray(cluster_ids).ravel().tolist()})


def _check_field(field: Any) -> str:
    if not isinstance(field, str) or not field:
        raise ValueError(f"Invalid metadata field name {field!r}: expected a non-empty string.")
    return field


def _normalize_label(field: str, value: Any) -> Any:
    # numpy scalars are common here (values often come from arrays) but are not JSON-able.
    if isinstance(value, np.generic):
        value = value.item()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"The value {value!r} of metadata field {field!r} cannot be saved: "
            "labels must be JSON-able (str, number, bool, None, list, dict)."
        ) from None
    return value


class ClusterMetadata:
    """Per-cluster metadata fields: the cluster group and free labels.

    Only explicitly set values are stored; `get` returns the field default
    (`UNSORTED` for ``group``, None for labels) for the other clusters.

    Parameters
    ----------
    data : dict or None
        Initial values, ``{field: {cluster_id: value}}`` (the format of
        `to_dict`, whose keys may be strings).

    Examples
    --------
    >>> m = ClusterMetadata()
    >>> m.set('group', [3, 5], 'good')
    {}
    >>> m.group(3), m.group(7)
    (2, 3)
    >>> m.set('quality', 3, 0.9)
    {}
    >>> m.get('quality', 3), m.get('quality', 4)
    (0.9, None)
    """

    def __init__(self, data: dict | None = None) -> None:
        self._data: dict[str, dict[int, Any]] = {GROUP_FIELD: {}}
        if data:
            self._load(data)

    # Field access
    # -------------------------------------------------------------------------

    @property
    def fields(self) -> list[str]:
        """Names of the fields: ``'group'`` first, then the labels ever set, sorted."""
        return [GROUP_FIELD] + sorted(f for f in self._data if f != GROUP_FIELD)

    @staticmethod
    def default(field: str) -> Any:
        """Value of `field` for a cluster where it was never set."""
        return UNSORTED if field == GROUP_FIELD else None

    def normalize(self, field: str, value: Any) -> Any:
        """Validate a value for `field` and return it in its stored form.

        Raises
        ------
        ValueError
            For an unknown group or a label value that is not JSON-able.
        """
        field = _check_field(field)
        if field == GROUP_FIELD:
            return normalize_group(value)
        return _normalize_label(field, value)

    def has(self, field: str, cluster: int) -> bool:
        """Whether `field` was explicitly set for `cluster`."""
        return cluster in self._data.get(field, {})

    def get(self, field: str, cluster: int) -> Any:
        """Value of `field` for `cluster`, or the field default when unset."""
        return self._data.get(field, {}).get(cluster, self.default(field))

    def values(self, field: str) -> dict[int, Any]:
        """Copy of the explicitly set values of `field`, ``{cluster: value}``."""
        return dict(self._data.get(field, {}))

    def set(self, field: str, cluster_ids: int | Iterable[int], value: Any) -> dict[int, Any]:
        """Set `field` to `value` for some clusters.

        Setting a label (not ``group``) to None unsets it, since None is the
        label default.

        Parameters
        ----------
        field : str
            ``'group'`` or a label name.
        cluster_ids : int or iterable of int
        value : Any
            A group name or integer for ``group``; any JSON-able value otherwise.

        Returns
        -------
        previous : dict
            ``{cluster: previous value}`` for the clusters where the field was
            explicitly set before; a cluster missing from it was unset. This is
            what an undo needs.
        """
        cluster_ids = normalize_cluster_ids(cluster_ids)
        value = self.normalize(field, value)
        values = self._data.setdefault(field, {})
        previous = {c: values[c] for c in cluster_ids if c in values}
        for c in cluster_ids:
            if value is None:
                values.pop(c, None)
            else:
                values[c] = value
        return previous

    def unset(self, field: str, cluster_ids: int | Iterable[int]) -> dict[int, Any]:
        """Forget the value of `field` for some clusters; return the previous values."""
        cluster_ids = normalize_cluster_ids(cluster_ids)
        values = self._data.get(_check_field(field), {})
        return {c: values.pop(c) for c in cluster_ids if c in values}

    # Groups
    # -------------------------------------------------------------------------

    def group(self, cluster: int) -> int:
        """Group of `cluster` as an integer (`UNSORTED` when unset)."""
        return self.get(GROUP_FIELD, cluster)

    @property
    def groups(self) -> dict[int, int]:
        """``{cluster: group}`` for the clusters whose group was explicitly set."""
        return self.values(GROUP_FIELD)

    @property
    def cluster_groups(self) -> dict[int, int]:
        """Alias of `groups`."""
        return self.groups

    def cluster_groups_for(self, cluster_ids: Iterable[int]) -> dict[int, int]:
        """``{cluster: group}`` for the given clusters, unset ones being `UNSORTED`."""
        groups = self._data[GROUP_FIELD]
        return {int(c): groups.get(int(c), UNSORTED) for c in cluster_ids}

    # Serialization
    # -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-friendly copy: ``{field: {str(cluster): value}}``, fields with values only."""
        return {
            field: {str(c): v for c, v in sorted(values.items())}
            for field, values in self._data.items()
            if values
        }

    def replace(self, data: dict) -> None:
        """Forget every value and load `data` (the format of `to_dict`)."""
        self._data = {GROUP_FIELD: {}}
        self._load(data)

    @classmethod
    def from_dict(cls, data: dict) -> ClusterMetadata:
        """Inverse of `to_dict` (cluster keys may be ints or digit strings)."""
        return cls(data)

    def _load(self, data: dict) -> None:
        if not isinstance(data, dict):
            raise ValueError(
                f"Cluster metadata must be a dict {{field: {{cluster: value}}}}, "
                f"got {type(data).__name__}."
            )
        for field, values in data.items():
            field = _check_field(field)
            if not isinstance(values, dict):
                raise ValueError(
                    f"Metadata field {field!r} must map cluster ids to values, "
                    f"got {type(values).__name__}."
                )
            for cluster, value in values.items():
                try:
                    cluster = int(cluster)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"Invalid cluster id {cluster!r} in metadata field {field!r}."
                    ) from None
                self.set(field, cluster, value)

    def __repr__(self) -> str:
        return f"ClusterMetadata({self.to_dict()!r})"
