"""The wizard: propose the next best cluster and its closest matches.

The wizard depends on a small interface only: a list of cluster ids, the group
of each cluster, a quality function and a similarity function. It can be
attached to a `Clustering` (anything with `cluster_ids`, `metadata.group(c)`
and a `'cluster'` event carrying an `UpdateInfo`) or driven by hand.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .bunch import Bunch
from .events import EventEmitter
from .metadata import GROUP_NAMES, UNSORTED, normalize_group

# Noise and MUA clusters are ignored by the wizard.
IGNORED_GROUPS = frozenset((0, 1))

_QUALITY_HELP = (
    "No quality function has been set on the wizard: call "
    "`wizard.set_quality_function(func)` (also usable as a decorator), pass "
    "`quality=func` to `Wizard()`, or enable a plugin that provides one. "
    "`func(cluster)` must return a float, higher is better."
)
_SIMILARITY_HELP = (
    "No similarity function has been set on the wizard: call "
    "`wizard.set_similarity_function(func)` (also usable as a decorator), pass "
    "`similarity=func` to `Wizard()`, or enable a plugin that provides one. "
    "`func(cluster_0, cluster_1)` must return a float, higher is more similar."
)


def group_id(group: Any) -> int:
    """The group number of a group number or name; None means unsorted."""
    return UNSORTED if group is None else normalize_group(group)


def _sort_key(value: Any) -> float:
    """Return a float for sorting: NaN and None rank last."""
    value = -math.inf if value is None else float(value)
    return -math.inf if math.isnan(value) else value


def _rank(clusters: Iterable[int], score: Callable[[int], Any]) -> list[int]:
    """Sort clusters by decreasing score, ties broken by increasing cluster id."""
    return sorted(clusters, key=lambda c: (-_sort_key(score(c)), c))


def _children(descendants: Iterable) -> dict[int, list[int]]:
    """Map every parent to its children, in order of appearance, each child once per parent."""
    children: dict[int, list[int]] = {}
    for old, new in descendants or ():
        kids = children.setdefault(int(old), [])
        if int(new) not in kids:
            kids.append(int(new))
    return children


def _replace(clusters: list[int], children: dict, is_valid: Callable, exclude=()) -> list[int]:
    """Replace parents by their valid children in place, drop invalid clusters, no duplicates."""
    out: list[int] = []
    seen = set(exclude)
    for cluster in clusters:
        for c in [cluster] + children.get(cluster, []):
            if c not in seen and is_valid(c):
                out.append(c)
                seen.add(c)
    return out


def _successor(old: list[int], current: int, children: dict, new: list[int]) -> int | None:
    """Return what replaces `current` after an update.

    `current` itself if it survived, else its first surviving child, else the next surviving
    cluster after it in the old list, else the previous one, else the first of the new list.
    """
    new_set = set(new)
    if current is None or current not in old:
        return new[0] if new else None
    i = old.index(current)
    for c in [current] + old[i + 1 :] + old[:i][::-1]:
        for d in [c] + children.get(c, []):
            if d in new_set:
                return d
    return new[0] if new else None


class Wizard(EventEmitter):
    """Propose a sequence of high-quality clusters ("best") and their merge candidates ("match").

    The wizard ranks clusters with a *quality* function and, once a best cluster is *pinned*,
    ranks the other clusters with a *similarity* function. Clusters in the groups ``noise`` (0)
    and ``mua`` (1) are ignored: they never appear in `best_list` or `match_list`.

    Parameters
    ----------
    cluster_ids : array-like or None
        The cluster ids, for use without a clustering (see `attach()` otherwise).
    cluster_groups : dict or None
        ``{cluster: group}`` where group is a number (0 noise, 1 mua, 2 good, 3 unsorted) or its
        name. Missing clusters are unsorted.
    quality : callable or None
        ``quality(cluster) -> float``, higher is better. See `set_quality_function()`.
    similarity : callable or None
        ``similarity(cluster_0, cluster_1) -> float``, higher is more similar.

    Notes
    -----
    *Starting and navigating.* `start()` ranks the non-ignored clusters by decreasing quality
    (ties by increasing id) into `best_list` and selects the first one. `pin()` ranks the other
    non-ignored clusters by decreasing similarity to the best into `match_list` and selects the
    first match; `unpin()` clears them. `next()`, `previous()`, `first()` and `last()` move in
    the match list when pinned, in the best list otherwise; `next_best()` etc. and
    `next_match()` etc. move in one list explicitly. Moving the best while pinned stays pinned
    and recomputes the matches; `next_match()` when not pinned pins. At either end of a list
    the selection stays where it is. A navigation on a wizard that has not started starts it
    (selecting the first best, pinned for `pin()` and the match navigation).
    Every navigation returns `selection` (``[best, match]`` without the Nones) and emits
    ``'select'`` with it when it changed.

    *Following the clustering.* `on_cluster(up)` (connected by `attach()`) updates the lists
    after a clustering change, without re-ranking everything:

    - a cluster replaced by new ones (``up.descendants``, ``(old, new)`` pairs) is replaced by
      them in place, each child once (a merge's child takes the place of its first parent);
      clusters deleted without a child are removed; new clusters that did not replace anything
      in a list are appended to it (ranked by quality, or by similarity for the match list);
    - if the best was replaced, its first child becomes the best; when pinned, the matches
      of the new best are recomputed and the first one selected (so merging the best and the
      match selects the merged cluster and its closest match). If the match was replaced, its
      first child becomes the match;
    - a cluster moved to noise or mua leaves the lists; if it was selected, the next one in its
      list is selected (the previous one at the end). A cluster moved back to good or
      unsorted reappears: the lists are ranked again, keeping the current selection;
    - undo and redo: the wizard keeps the state (lists and selection) it had before each
      operation; when an undo reverses that operation, that state comes back exactly, and a
      redo brings back the state seen before the undo. If the history does not match (for
      example an operation done before `start()`), the rules above apply instead, which also
      work for undo thanks to the reversed descendants.

    The quality of a cluster is computed once and cached (cluster ids are never reused); only
    new clusters get their quality computed after an update. Setting a quality or similarity
    function clears its cache.

    *Events.* ``'select'`` (the new selection, a list) is emitted from inside `on_cluster`, so
    attach the wizard after the objects that must be up to date when views redraw (such as a
    per-cluster cache). `reset()` resets the wizard and, unlike `EventEmitter.reset`, keeps
    the callbacks.

    Examples
    --------
    >>> sizes = {1: 10, 2: 30, 3: 20, 4: 25}
    >>> wizard = Wizard(cluster_ids=[1, 2, 3, 4], cluster_groups={4: 'noise'},
    ...                 quality=sizes.get, similarity=lambda a, b: -abs(a - b))
    >>> wizard.start()
    [2]
    >>> wizard.best_list
    [2, 3, 1]
    >>> wizard.next()
    [3]
    >>> wizard.pin()
    [3, 2]
    >>> wizard.next()
    [3, 1]
    >>> wizard.next()  # the end of the match list: stay
    [3, 1]
    >>> wizard.unpin()
    [3]
    """

    def __init__(
        self,
        cluster_ids: Iterable[int] | None = None,
        cluster_groups: dict | None = None,
        quality: Callable | None = None,
        similarity: Callable | None = None,
    ) -> None:
        # Not `super().__init__()`: it calls `self.reset()`, which here resets the wizard.
        EventEmitter.reset(self)
        self._quality: Callable | None = None
        self._similarity: Callable | None = None
        self._quality_cache: dict[int, float] = {}
        self._similarity_cache: OrderedDict[int, dict[int, float]] = OrderedDict()
        self._clustering = None
        self._metadata = None
        self._groups: dict[int, int] = {}
        self._cluster_ids: list[int] = []
        if quality is not None:
            self.set_quality_function(quality)
        if similarity is not None:
            self.set_similarity_function(similarity)
        self._set_state_empty()
        if cluster_ids is not None:
            self._cluster_ids = sorted(int(c) for c in cluster_ids)
        if cluster_groups is not None:
            self._groups = {int(c): group_id(g) for c, g in cluster_groups.items()}

    # Functions
    # -------------------------------------------------------------------------

    def set_quality_function(self, func: Callable) -> Callable:
        """Register `func(cluster) -> float` returning the quality of a cluster (higher is better).

        Can be used as a decorator; returns `func`. Clears the cached qualities.
        """
        if not callable(func):
            raise TypeError(f"The quality function must be callable, got {func!r}.")
        self._quality = func
        self._quality_cache.clear()
        return func

    def set_similarity_function(self, func: Callable) -> Callable:
        """Register `func(cluster_0, cluster_1) -> float` (higher is more similar).

        Can be used as a decorator; returns `func`. Clears the cached similarities.
        """
        if not callable(func):
            raise TypeError(f"The similarity function must be callable, got {func!r}.")
        self._similarity = func
        self._similarity_cache.clear()
        return func

    def _check_quality(self) -> None:
        if self._quality is None:
            raise RuntimeError(_QUALITY_HELP)

    def _check_similarity(self) -> None:
        if self._similarity is None:
            raise RuntimeError(_SIMILARITY_HELP)

    def _cached_quality(self, cluster: int) -> float:
        if cluster not in self._quality_cache:
            self._check_quality()
            self._quality_cache[cluster] = _sort_key(self._quality(cluster))
        return self._quality_cache[cluster]

    def _cached_similarity(self, ref: int) -> Callable[[int], float]:
        self._check_similarity()
        cache = self._similarity_cache.pop(ref, {})
        self._similarity_cache[ref] = cache  # Most recently used last.
        while len(self._similarity_cache) > 16:
            self._similarity_cache.popitem(last=False)

        def score(c: int) -> float:
            if c not in cache:
                cache[c] = _sort_key(self._similarity(ref, c))
            return cache[c]

        return score

    # Clusters and groups
    # -------------------------------------------------------------------------

    def attach(self, clustering: Any) -> Wizard:
        """Follow a clustering: take its cluster ids and groups, and connect `on_cluster`.

        `clustering` needs `cluster_ids`, optionally `metadata.group(cluster)`, and must emit
        ``'cluster'`` events with an `UpdateInfo`. Returns the wizard.
        """
        self.detach()
        self._clustering = clustering
        self._metadata = getattr(clustering, "metadata", None)
        self._cluster_ids = [int(c) for c in clustering.cluster_ids]
        clustering.connect(self.on_cluster, event="cluster")
        if self._started:
            self._resync()
        return self

    def detach(self) -> None:
        """Stop following the attached clustering, if any, keeping its current groups."""
        if self._clustering is None:
            return
        self._groups = {c: self._group(c) for c in self._cluster_ids}
        self._clustering.unconnect(self.on_cluster)
        self._clustering = self._metadata = None

    def _group(self, cluster: int) -> int:
        if self._metadata is not None:
            return group_id(self._metadata.group(cluster))
        return self._groups.get(cluster, UNSORTED)

    def _is_ignored(self, cluster: int) -> bool:
        return self._group(cluster) in IGNORED_GROUPS

    @property
    def cluster_ids(self) -> np.ndarray:
        """Sorted array of the cluster ids in the current clustering."""
        return np.array(self._cluster_ids, dtype=np.int64)

    @cluster_ids.setter
    def cluster_ids(self, cluster_ids: Iterable[int]) -> None:
        self._check_not_attached("cluster_ids")
        self._cluster_ids = sorted(int(c) for c in cluster_ids)
        self._resync()

    @property
    def cluster_groups(self) -> dict[int, str]:
        """``{cluster: group name}`` ('noise', 'mua', 'good' or 'unsorted') of every cluster."""
        return {c: GROUP_NAMES[self._group(c)] for c in self._cluster_ids}

    @cluster_groups.setter
    def cluster_groups(self, cluster_groups: dict) -> None:
        self._check_not_attached("cluster_groups")
        self._groups = {int(c): group_id(g) for c, g in cluster_groups.items()}
        self._resync()

    def _check_not_attached(self, name: str) -> None:
        if self._clustering is not None:
            raise RuntimeError(
                f"Cannot set `{name}` on a wizard attached to a clustering: change the "
                "clustering instead (or call `wizard.detach()` first)."
            )

    @property
    def n_clusters(self) -> int:
        """Total number of clusters."""
        return len(self._cluster_ids)

    @property
    def n_processed(self) -> int:
        """Number of clusters whose group is not unsorted."""
        return sum(self._group(c) != UNSORTED for c in self._cluster_ids)

    # Ranking
    # -------------------------------------------------------------------------

    def best_clusters(self, n_max: int | None = None, quality: Callable | None = None) -> list:
        """Return the non-ignored clusters sorted by decreasing quality (ties: increasing id).

        The default quality function is the registered one (its values are cached).
        """
        score = quality if quality is not None else self._cached_quality
        if quality is None:
            self._check_quality()
        clusters = [c for c in self._cluster_ids if not self._is_ignored(c)]
        return _rank(clusters, score)[:n_max]

    def most_similar_clusters(
        self,
        cluster: int | None = None,
        n_max: int | None = None,
        similarity: Callable | None = None,
    ) -> list:
        """Return the `n_max` non-ignored clusters most similar to `cluster` (default: the best).

        Sorted by decreasing similarity, ties by increasing id; `cluster` itself is excluded.
        The default similarity function is the registered one.
        """
        if cluster is None:
            cluster = self._best
        if cluster is None:
            raise ValueError("No cluster was given and the wizard has no current best cluster.")
        cluster = int(cluster)
        if similarity is None:
            score = self._cached_similarity(cluster)
        else:

            def score(c):
                return similarity(cluster, c)

        others = [c for c in self._cluster_ids if c != cluster and not self._is_ignored(c)]
        return _rank(others, score)[:n_max]

    # State
    # -------------------------------------------------------------------------

    def _set_state_empty(self) -> None:
        self._started = False
        self._pinned = False
        self._best_list: list[int] = []
        self._match_list: list[int] = []
        self._best: int | None = None
        self._match: int | None = None
        self._undo_stack: list = []
        self._redo_stack: list = []

    def _state(self) -> tuple:
        return (
            list(self._best_list),
            list(self._match_list),
            self._best,
            self._match,
            self._pinned,
        )

    @property
    def has_started(self) -> bool:
        """Whether `start()` was called (and not `reset()` since)."""
        return self._started

    @property
    def pinned(self) -> bool:
        """Whether the best cluster is pinned (the match list is active)."""
        return self._pinned

    @property
    def best(self) -> int | None:
        """Currently-selected best cluster, or None."""
        return self._best

    @property
    def match(self) -> int | None:
        """Currently-selected closest match, or None."""
        return self._match

    @property
    def best_list(self) -> list[int]:
        """Current list of best clusters, by decreasing quality."""
        return list(self._best_list)

    @property
    def match_list(self) -> list[int]:
        """Current list of closest matches, by decreasing similarity to the best."""
        return list(self._match_list)

    @property
    def selection(self) -> list[int]:
        """The current selection: ``[best, match]`` without the Nones."""
        return [c for c in (self._best, self._match) if c is not None]

    def get_panel_params(self) -> Bunch:
        """Return what a status panel shows: selection, positions, groups and progress."""

        def position(c, lst):
            return lst.index(c) + 1 if c in lst else None

        return Bunch(
            best=self._best,
            match=self._match,
            pinned=self._pinned,
            best_index=position(self._best, self._best_list),
            n_best=len(self._best_list),
            match_index=position(self._match, self._match_list),
            n_match=len(self._match_list),
            best_group=None if self._best is None else GROUP_NAMES[self._group(self._best)],
            match_group=None if self._match is None else GROUP_NAMES[self._group(self._match)],
            n_processed=self.n_processed,
            n_clusters=self.n_clusters,
        )

    def _emit_if_changed(self, old_selection: list) -> list:
        selection = self.selection
        if selection != old_selection:
            self.emit("select", selection)
        return selection

    def reset(self) -> list:
        """Go back to the not-started state with empty lists (callbacks stay connected)."""
        old = self.selection
        self._set_state_empty()
        return self._emit_if_changed(old)

    def start(self) -> list:
        """Rank the non-ignored clusters by quality and select the best one (not pinned)."""
        old = self.selection
        self._start()
        return self._emit_if_changed(old)

    def _start(self) -> None:
        best_list = self.best_clusters()
        self._set_state_empty()
        self._best_list = best_list
        self._started = True
        self._best = self._best_list[0] if self._best_list else None

    def _ensure_started(self) -> bool:
        """Start (without emitting) if needed; return whether the wizard had to start."""
        if self._started:
            return False
        self._start()
        return True

    def _compute_matches(self) -> None:
        """Recompute the match list of the current best and select its first match."""
        if self._best is None:
            self._match_list, self._match = [], None
            return
        self._match_list = self.most_similar_clusters(self._best)
        self._match = self._match_list[0] if self._match_list else None

    def pin(self, cluster: int | None = None) -> list:
        """Pin the current best (or `cluster`, which becomes the best) and select its best match.

        Raises ValueError if `cluster` is unknown or ignored (noise or mua).
        """
        old = self.selection
        self._ensure_started()
        if cluster is not None:
            cluster = int(cluster)
            if cluster not in self._best_list:
                if cluster not in set(self._cluster_ids):
                    raise ValueError(f"Cannot pin cluster {cluster}: it does not exist.")
                raise ValueError(
                    f"Cannot pin cluster {cluster}: it is in the group "
                    f"{GROUP_NAMES[self._group(cluster)]!r}, which the wizard ignores; move it "
                    "to 'good' or 'unsorted' first."
                )
            self._best = cluster
        if self._best is not None:
            self._check_similarity()
            self._pinned = True
            self._compute_matches()
        return self._emit_if_changed(old)

    def unpin(self) -> list:
        """Unpin the current best: clear the match list and the match."""
        old = self.selection
        self._pinned = False
        self._match_list, self._match = [], None
        return self._emit_if_changed(old)

    # Navigation
    # -------------------------------------------------------------------------

    def _move_best(self, where: str) -> list:
        old = self.selection
        lst = self._best_list
        if not self._ensure_started() and lst:
            new = _move(lst, self._best, where)
            if new != self._best:
                self._best = new
                if self._pinned:
                    self._compute_matches()
        return self._emit_if_changed(old)

    def _move_match(self, where: str) -> list:
        if not self._pinned:
            return self.pin()
        old = self.selection
        if self._match_list:
            self._match = _move(self._match_list, self._match, where)
        return self._emit_if_changed(old)

    def next_best(self) -> list:
        """Select the next best cluster (recomputing the matches if pinned)."""
        return self._move_best("next")

    def previous_best(self) -> list:
        """Select the previous best cluster (recomputing the matches if pinned)."""
        return self._move_best("previous")

    def next_match(self) -> list:
        """Select the next match (pins the best first if it is not pinned)."""
        return self._move_match("next")

    def previous_match(self) -> list:
        """Select the previous match (pins the best first if it is not pinned)."""
        return self._move_match("previous")

    def next(self) -> list:
        """Next match when pinned, else next best."""
        return self._move_match("next") if self._pinned else self._move_best("next")

    def previous(self) -> list:
        """Previous match when pinned, else previous best."""
        return self._move_match("previous") if self._pinned else self._move_best("previous")

    def first(self) -> list:
        """First match when pinned, else first best."""
        return self._move_match("first") if self._pinned else self._move_best("first")

    def last(self) -> list:
        """Last match when pinned, else last best."""
        return self._move_match("last") if self._pinned else self._move_best("last")

    # Clustering updates
    # -------------------------------------------------------------------------

    def on_cluster(self, up: Any) -> list:
        """Update the lists and the selection after a clustering change (an `UpdateInfo`).

        Returns the selection; emits ``'select'`` if it changed. See the class docstring.
        """
        up = Bunch(up)
        description = up.get("description") or ""
        is_metadata = description.startswith("metadata")
        self._update_clusters(up, is_metadata)
        if not self._started:
            return self.selection
        old = self.selection
        history = up.get("history")
        key = (
            frozenset(up.get("added") or ()),
            frozenset(up.get("deleted") or ()),
            frozenset(up.get("metadata_changed") or ()) if is_metadata else frozenset(),
            is_metadata,
        )
        reverse_key = (key[1], key[0]) + key[2:]
        before = self._state()
        if description == "reset":
            self._undo_stack, self._redo_stack = [], []
            self._resync_lists()
        elif history == "undo" and self._undo_stack and self._undo_stack[-1][0] == reverse_key:
            rec_key, state = self._undo_stack.pop()
            self._redo_stack.append((rec_key, before))
            self._restore(state)
        elif history == "redo" and self._redo_stack and self._redo_stack[-1][0] == key:
            rec_key, state = self._redo_stack.pop()
            self._undo_stack.append((rec_key, before))
            self._restore(state)
        else:
            if history is None:
                self._undo_stack.append((key, before))
                self._redo_stack = []
            else:  # The histories went out of step: forget ours.
                self._undo_stack, self._redo_stack = [], []
            if is_metadata:
                self._apply_metadata(up)
            else:
                self._apply_descendants(up)
        return self._emit_if_changed(old)

    def _update_clusters(self, up: Bunch, is_metadata: bool) -> None:
        """Bring the cluster ids and groups up to date."""
        if self._clustering is not None:
            self._cluster_ids = [int(c) for c in self._clustering.cluster_ids]
        else:
            deleted = {int(c) for c in up.get("deleted") or ()}
            ids = {c for c in self._cluster_ids if c not in deleted}
            ids.update(int(c) for c in up.get("added") or ())
            self._cluster_ids = sorted(ids)
            if is_metadata and (
                up.get("metadata_key") == "group" or up.get("description") == "metadata_group"
            ):
                # `metadata_values` (the values now in effect) is right for undo too.
                values = up.get("metadata_values") or {}
                for c in up.get("metadata_changed") or ():
                    value = values[c] if c in values else up.get("metadata_value")
                    self._groups[int(c)] = group_id(value)

    def _is_valid(self) -> Callable[[int], bool]:
        existing = set(self._cluster_ids)
        return lambda c: c in existing and not self._is_ignored(c)

    def _missing(self, present: list[int]) -> list[int]:
        """Valid clusters not in `present`."""
        present_set, is_valid = set(present), self._is_valid()
        return [c for c in self._cluster_ids if c not in present_set and is_valid(c)]

    def _apply_descendants(self, up: Bunch) -> None:
        """Replace parents by their children in the lists (merge, split, assign)."""
        children = _children(up.get("descendants"))
        is_valid = self._is_valid()
        old_best, old_best_list = self._best, self._best_list
        best_list = _replace(old_best_list, children, is_valid)
        best_list += _rank(self._missing(best_list), self._cached_quality)
        self._best_list = best_list
        self._best = _successor(old_best_list, old_best, children, best_list)
        if not self._pinned:
            return
        if self._best != old_best:
            self._compute_matches()
            return
        old_match = self._match
        old_match_list = self._match_list
        match_list = _replace(old_match_list, children, is_valid, exclude=(self._best,))
        missing = [c for c in self._missing(match_list) if c != self._best]
        if missing:
            match_list += _rank(missing, self._cached_similarity(self._best))
        self._match_list = match_list
        self._match = _successor(old_match_list, old_match, children, match_list)

    def _apply_metadata(self, up: Bunch) -> None:
        """Remove clusters moved to noise/mua; re-rank if some came back."""
        is_valid = self._is_valid()
        old_best, old_match = self._best, self._match
        old_best_list, old_match_list = self._best_list, self._match_list
        missing = self._missing(old_best_list)
        if missing:
            # Some clusters came back: rank again (cached qualities), keep the selection.
            best_list = self.best_clusters()
        else:
            best_list = [c for c in old_best_list if is_valid(c)]
        self._best_list = best_list
        if old_best in best_list:
            self._best = old_best
        else:
            self._best = _successor(old_best_list, old_best, {}, best_list)
        if not self._pinned:
            return
        if self._best != old_best:
            self._compute_matches()
            return
        if missing:
            match_list = self.most_similar_clusters(self._best)
        else:
            match_list = [c for c in old_match_list if is_valid(c) and c != self._best]
        self._match_list = match_list
        if old_match in match_list:
            self._match = old_match
        else:
            self._match = _successor(old_match_list, old_match, {}, match_list)

    def _restore(self, state: tuple) -> None:
        """Restore a saved state, dropping what no longer exists and adding what is missing."""
        best_list, match_list, best, match, pinned = state
        is_valid = self._is_valid()
        self._best_list = [c for c in best_list if is_valid(c)]
        self._best_list += _rank(self._missing(self._best_list), self._cached_quality)
        self._best = _successor(best_list, best, {}, self._best_list)
        self._pinned = pinned
        if not pinned:
            self._match_list, self._match = [], None
        elif self._best != best:
            self._compute_matches()
        else:
            self._match_list = [c for c in match_list if is_valid(c) and c != self._best]
            missing = [c for c in self._missing(self._match_list) if c != self._best]
            if missing:
                self._match_list += _rank(missing, self._cached_similarity(self._best))
            self._match = _successor(match_list, match, {}, self._match_list)

    def _resync(self) -> None:
        """Rank everything again after the clusters were replaced wholesale, keeping the
        selection when it still exists. Emits 'select' if the selection changed."""
        if not self._started:
            return
        old = self.selection
        self._resync_lists()
        self._emit_if_changed(old)

    def _resync_lists(self) -> None:
        best, match = self._best, self._match
        self._best_list = self.best_clusters()
        self._best = (
            best if best in self._best_list else (self._best_list[0] if self._best_list else None)
        )
        if self._pinned:
            self._compute_matches()
            if self._best == best and match in self._match_list:
                self._match = match


def _move(clusters: list[int], current: int | None, where: str) -> int:
    """Return the cluster at the new position in a non-empty list (no wrap at the ends)."""
    if where == "first" or current not in clusters:
        return clusters[0]
    if where == "last":
        return clusters[-1]
    i = clusters.index(current)
    i = min(i + 1, len(clusters) - 1) if where == "next" else max(i - 1, 0)
    return clusters[i]
