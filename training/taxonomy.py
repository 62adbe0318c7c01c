"""Class trees (pure logic): which node is whose parent, levels, ancestor sums and tree distances.

A :class:`Taxonomy` is a parent map over unique node names; the leaves are the classes a model
predicts (softmax over leaves). An ancestor's probability is the sum of its leaves', so a
prediction can be read at any level. Level ``d`` (1 = the top) holds each leaf's ancestor at depth
``d``, or the leaf itself when it is shallower: every level partitions the leaves, and its
probabilities sum to 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


class TaxonomyError(ValueError):
    """A taxonomy that is not a tree, or that does not fit the data's labels."""


@dataclass(frozen=True)
class Taxonomy:
    """``parents[node]`` is the node's parent, ``None`` for a top-level node."""

    parents: Mapping[str, str | None]

    def __post_init__(self) -> None:
        for node, parent in self.parents.items():
            if parent is not None and parent not in self.parents:
                raise TaxonomyError(f"taxonomy: parent {parent!r} of {node!r} is not itself a node")
        for node in self.parents:
            self.path(node)  # raises on a cycle

    # ------------------------------------------------------------ building
    @classmethod
    def from_paths(cls, paths: Iterable[str], sep: str = "/") -> Taxonomy:
        """Nested folder names (``animal/cat``): every prefix is a node, named by its full path."""
        parents: dict[str, str | None] = {}
        for path in paths:
            parts = path.split(sep)
            for i in range(len(parts)):
                parents["/".join(parts[: i + 1])] = "/".join(parts[:i]) or None
        return cls(parents)

    @classmethod
    def from_obj(cls, obj: object) -> Taxonomy:
        """A nested tree (``{clothing: {upper: [shirt, t-shirt]}}``) or a flat child -> parent map
        (``None`` or ``""`` for a top-level node)."""
        if isinstance(obj, Mapping) and all(isinstance(v, str) or v is None for v in obj.values()):
            return cls({str(k): (str(v) or None if v is not None else None) for k, v in obj.items()})
        parents: dict[str, str | None] = {}

        def walk(node: object, parent: str | None) -> None:
            items: Iterable = node.items() if isinstance(node, Mapping) else ((n, None) for n in node)  # type: ignore[union-attr]
            if not isinstance(node, Mapping | list):
                raise TaxonomyError(f"taxonomy: under {parent!r} expected a mapping or a list, found {node!r}")
            for name, children in items:
                name = str(name)
                if name in parents:
                    raise TaxonomyError(f"taxonomy: node {name!r} appears twice; node names must be unique")
                parents[name] = parent
                if children is not None:
                    walk(children, name)

        walk(obj, None)
        return cls(parents)

    @classmethod
    def from_file(cls, path: str | Path) -> Taxonomy:
        """YAML or JSON: a nested tree, or a flat ``child: parent`` map (``parent: null`` at the top)."""
        try:
            text = Path(path).read_text()
            obj = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise TaxonomyError(f"taxonomy file {path} cannot be read: {exc}") from None
        if not isinstance(obj, Mapping | list) or not obj:
            raise TaxonomyError(f"taxonomy file {path}: expected a nested tree or a child: parent mapping")
        return cls.from_obj(obj)

    def restricted_to(self, leaves: Iterable[str]) -> Taxonomy:
        """Only ``leaves`` and their ancestors (branches without data dropped).

        Raises:
            TaxonomyError: a label is not a node, or is an inner node (labels must be leaves).
        """
        leaves = list(leaves)
        unknown = [x for x in leaves if x not in self.parents]
        if unknown:
            raise TaxonomyError(f"labels not in the taxonomy: {', '.join(unknown[:10])}; every label must be a leaf")
        inner = sorted(set(leaves) & set(self.parents.values()))
        if inner:
            raise TaxonomyError(f"labels that are inner nodes of the taxonomy: {', '.join(inner[:10])}; "
                                "label images with leaves only")  # fmt: skip
        keep = {n for leaf in leaves for n in self.path(leaf)}
        return Taxonomy({n: p for n, p in self.parents.items() if n in keep})

    # ------------------------------------------------------------ reading
    def path(self, node: str) -> list[str]:
        """From the top-level ancestor down to ``node``."""
        out = [node]
        while (parent := self.parents[out[-1]]) is not None:
            if parent in out:
                raise TaxonomyError(f"taxonomy has a cycle through {parent!r}")
            out.append(parent)
        return out[::-1]

    def depth(self, node: str) -> int:
        return len(self.path(node))

    @property
    def leaves(self) -> list[str]:
        inner = set(self.parents.values())
        return [n for n in self.parents if n not in inner]

    def max_depth(self, leaves: Sequence[str]) -> int:
        return max(self.depth(leaf) for leaf in leaves)

    def at_level(self, leaf: str, level: int) -> str:
        """The leaf's ancestor at depth ``level`` (1 = top), or the leaf itself when it is shallower."""
        path = self.path(leaf)
        return path[min(level, len(path)) - 1]

    def level_nodes(self, leaves: Sequence[str], level: int) -> list[str]:
        """The nodes of ``level``, in the order of their first leaf."""
        return list(dict.fromkeys(self.at_level(leaf, level) for leaf in leaves))

    def level_matrix(self, leaves: Sequence[str], level: int) -> tuple[list[str], np.ndarray]:
        """(nodes, M) with ``M[i, j] = 1`` when leaf ``i`` lies under node ``j``: ``probs @ M`` sums leaves."""
        nodes = self.level_nodes(leaves, level)
        index = {n: j for j, n in enumerate(nodes)}
        m = np.zeros((len(leaves), len(nodes)), np.float32)
        for i, leaf in enumerate(leaves):
            m[i, index[self.at_level(leaf, level)]] = 1.0
        return nodes, m

    def distance(self, a: str, b: str) -> int:
        """Edges between two nodes through their lowest common ancestor (a virtual root joins the tops)."""
        pa, pb = self.path(a), self.path(b)
        common = 0
        for x, y in zip(pa, pb, strict=False):
            if x != y:
                break
            common += 1
        return (len(pa) - common) + (len(pb) - common)

    def to_json(self) -> dict[str, str]:
        """child -> parent, ``""`` for a top-level node (the model store's metadata cannot hold None)."""
        return {node: parent or "" for node, parent in self.parents.items()}
