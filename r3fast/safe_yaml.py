"""YAML for configs and flags, refused before it can hurt: no aliases (an alias bomb expands to
gigabytes while a message is built), no duplicate keys (the second would silently win), and at
most `MAX_DEPTH` levels of nesting (no RecursionError later). Errors are `yaml.YAMLError`s with a
one-line reason, so callers that already report YAML errors report these too."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "load"]

MAX_DEPTH = 32


class RefusedYAML(yaml.YAMLError):
    pass


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = getattr(event.start_mark, "line", -1) + 1
        if isinstance(event, yaml.AliasEvent):
            raise RefusedYAML(f"line {line}: YAML aliases (*{event.anchor}) are not accepted; write it out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RefusedYAML(f"line {line}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            if duplicate:
                raise RefusedYAML(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """`yaml.safe_load(text)` with the refusals above."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
