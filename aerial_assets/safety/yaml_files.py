"""The one YAML loader for every file a user hands the product (registry, label map, legend, raster spec,
``--config``). No Dagster import.

``yaml.safe_load`` builds no objects, but it still expands aliases: 360 bytes of nested anchors (8 levels of 9
aliases) describe a structure of 43 million nodes, which validation then walks and an error message prints whole.
So the document is composed to YAML nodes first (LibYAML's C parser where installed), its size *as expanded* is
counted node by node with aliases counted at every use, and only a document within the limits is constructed:
a bomb is refused in milliseconds, in one line. Duplicate mapping keys can be refused too (the registry must not
lose a county to a repeated key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from aerial_assets.errors import ConfigurationError

_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlLimits:
    """What one document may hold: bytes of text, nodes after alias expansion, nesting depth."""

    max_bytes: int = 1_000_000
    max_nodes: int = 200_000
    max_depth: int = 64


DEFAULT_LIMITS = YamlLimits()


class _Loader(_BASE):  # type: ignore[misc, valid-type]
    unique_keys = False

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if self.unique_keys:
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {str(key)[:80]!r}",
                                                            key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


class _UniqueLoader(_Loader):
    unique_keys = True


def _expanded_size(root: yaml.Node, limits: YamlLimits, where: str) -> int:
    """Nodes of the document with every alias expanded, computed on the shared node graph (each node once)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > limits.max_depth:
            raise ConfigurationError(f"{where}: nests deeper than {limits.max_depth} levels: not read")
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1 << 62  # a node that contains itself (a recursive alias) is infinitely large
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v, depth + 1) for v in node.value)
        else:
            total = 1
        sizes[id(node)] = total
        if total > limits.max_nodes:
            raise ConfigurationError(f"{where}: expands to more than {limits.max_nodes:,} values (nested aliases?): "
                                     "not read; write the values out instead of through anchors and aliases")
        return total

    return size(root, 0)


def load_yaml(text: str, where: str, *, limits: YamlLimits = DEFAULT_LIMITS, unique_keys: bool = False,
              error: type[Exception] = ConfigurationError) -> Any:
    """The document in ``text`` (None for an empty one), or ``error`` naming ``where`` (for example
    ``"label map /x/map.yaml"``) in one short line: too large, too deep, alias-expanded past the limit, not
    valid YAML, or (``unique_keys``) a repeated mapping key."""
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    if n_bytes > limits.max_bytes:
        raise error(f"{where}: {n_bytes:,} bytes, over the limit of {limits.max_bytes:,}: not read")
    loader = (_UniqueLoader if unique_keys else _Loader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            _expanded_size(node, limits, where)
        except ConfigurationError as exc:
            raise error(str(exc)) from None
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({' '.join(str(exc).split())[:300]})") from None
    except RecursionError:
        raise error(f"{where}: nests too deeply: not read") from None
    finally:
        loader.dispose()
