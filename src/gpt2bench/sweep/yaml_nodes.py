"""Reading YAML with the line each value came from, so a config's errors can say
`file:line: field: what is wrong`."""

from __future__ import annotations

from typing import Any

import yaml

from gpt2bench.core.errors import UsageError


class _Node:
    """A YAML value with the line it came from (1-based), so errors can point at it."""

    def __init__(self, node: yaml.Node, path: str) -> None:
        self.node, self.path = node, path

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1


def _fail(src: str, node: _Node, message: str) -> UsageError:
    return UsageError(f"{src}:{node.line}: {node.path}: {message}")


def _mapping(src: str, n: _Node, allowed: set[str]) -> dict[str, _Node]:
    if not isinstance(n.node, yaml.MappingNode):
        if not n.path:  # the whole file
            raise UsageError(f"{src}:{n.line}: the config must be a mapping of keys (model:, backends:, ...)")
        raise _fail(src, n, "expected a mapping")
    out: dict[str, _Node] = {}
    for key_node, value_node in n.node.value:
        key = key_node.value
        child = _Node(value_node, f"{n.path}.{key}" if n.path else key)
        if key not in allowed:
            raise _fail(src, _Node(key_node, child.path), f"unknown key (valid: {', '.join(sorted(allowed))})")
        if key in out:  # YAML itself keeps the last one silently
            first = out[key].node.start_mark.line + 1
            raise _fail(src, _Node(key_node, child.path), f"given twice (first on line {first})")
        out[key] = child
    return out


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _scalar(src: str, n: _Node, kind: type, nullable: bool = False) -> Any:
    expected = KIND_NAMES.get(kind, f"a {kind.__name__}")
    if not isinstance(n.node, yaml.ScalarNode):
        raise _fail(src, n, f"expected {expected}")
    value = yaml.safe_load(yaml.serialize(n.node))
    if value is None and nullable:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(src, n, f"expected {expected}, got {value!r}")
    return value


def _positive_int(src: str, n: _Node, minimum: int = 1) -> int:
    value = _scalar(src, n, int)
    if value < minimum:
        raise _fail(src, n, f"must be at least {minimum}, got {value}")
    return value


def _positive_seconds(src: str, n: _Node) -> float:
    value = _scalar(src, n, float)
    if not value > 0:
        raise _fail(src, n, f"must be more than 0 seconds, got {value:g}")
    return value


def _int_list(src: str, n: _Node) -> list[int]:
    """A non-empty list of positive integers; one listed twice is an error, not a second measurement."""
    if not isinstance(n.node, yaml.SequenceNode):
        raise _fail(src, n, "expected a list of integers")
    if not n.node.value:
        raise _fail(src, n, "must not be empty")
    return [_positive_int(src, _Node(item, f"{n.path}[{i}]")) for i, item in enumerate(n.node.value)]


def _repeats(src: str, top: dict[str, _Node]) -> list[str]:
    """Notes for values a list gives more than once: each cell is measured once."""
    notes = []
    for key in ("prompt_lens", "gen_lens", "batch_sizes"):
        if key in top:
            values = _int_list(src, top[key])
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                notes.append(f"{src}:{top[key].line}: {key} lists {', '.join(map(str, twice))} more than once; "
                             "each cell is measured once")  # fmt: skip
    return notes
