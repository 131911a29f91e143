"""YAML from outside, parsed with bounded work: `yaml.safe_load` plus limits on size, nesting and
alias expansion.

A few hundred bytes of YAML can describe a document of billions of nodes with anchors and aliases
(`&a [x, x]`, `&b [*a, *a]`, ...: an "alias bomb"). PyYAML shares the aliased objects, so loading is
cheap, but anything that walks the result (validation, copying, printing an error that embeds it)
does the exponential work. Aliases are not refused outright: anchors are ordinary YAML that people
use to avoid repeating a block, and merge keys (`<<: *defaults`) are common in trainer configs.
Instead the loader counts what aliases *expand to*: every node reachable through an alias (its whole
subtree, nested aliases and merges included) counts against `MAX_ALIAS_NODES`, and the nesting depth
of the expanded document is capped at `MAX_DEPTH`, so the work of loading and of any later walk stays
linear in the input. A recursive alias (a node containing itself) is refused: it has no finite
expansion. Every error is a `yaml.YAMLError` (so existing handlers still catch it) whose message is
one short line without the input in it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml's event parser: ~7x faster than the pure-Python one, so 1 MiB parses in seconds
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None

MAX_BYTES = 1 << 20  # 1 MiB: far above any real config, far below what hurts
MAX_DEPTH = 64  # nesting of the expanded document
MAX_ALIAS_NODES = 10_000  # nodes that alias expansion may add, in all
MAX_NODES = 100_000  # nodes written out in the input (a real config has hundreds): ~1 s of parsing


class YAMLLimitError(yaml.YAMLError):
    """The input is over one of the limits; the message is one short line."""


class _BoundedComposer(Composer):
    """PyYAML's composer, refusing documents over MAX_DEPTH deep or whose aliases expand to more than
    MAX_ALIAS_NODES nodes, before anything is constructed from them."""

    def _start_counting(self) -> None:
        self._depth = 0
        self._nodes = 0
        self._alias_nodes = 0
        self._size: dict[Node, tuple[int, int]] = {}  # composed node -> (expanded nodes, expanded depth)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # raises on an undefined alias
            if node not in self._size:
                raise YAMLLimitError(f"line {event.start_mark.line + 1}: recursive YAML alias "
                                     f"'{_clip(event.anchor, 40)}' (refused)")
            self._alias_nodes += self._size[node][0]
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise YAMLLimitError(f"line {event.start_mark.line + 1}: YAML aliases expand to more than "
                                     f"{MAX_ALIAS_NODES} nodes (alias bomb? refused)")
            return node
        self._depth += 1
        self._nodes += 1
        if self._depth > MAX_DEPTH or self._nodes > MAX_NODES:
            mark = self.peek_event().start_mark
            what = f"nested deeper than {MAX_DEPTH} levels" if self._depth > MAX_DEPTH else f"more than {MAX_NODES} nodes"
            raise YAMLLimitError(f"line {mark.line + 1}: {what} (refused)")
        node = super().compose_node(parent, index)
        self._depth -= 1
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        sizes = [self._size[c] for c in children if c in self._size]
        count = 1 + sum(s[0] for s in sizes)
        depth = 1 + max((s[1] for s in sizes), default=0)
        if depth > MAX_DEPTH:
            raise YAMLLimitError(f"line {node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels "
                                 "once aliases are expanded (refused)")
        self._size[node] = (count, depth)
        return node


if CParser is not None:

    class BoundedSafeLoader(_BoundedComposer, CParser, SafeConstructor, Resolver):
        """libyaml events, composed (and counted) in Python, constructed as `yaml.SafeLoader` does."""

        def __init__(self, stream: Any) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._start_counting()

else:  # pragma: no cover

    class BoundedSafeLoader(_BoundedComposer, yaml.SafeLoader):  # type: ignore[no-redef]
        def __init__(self, stream: Any) -> None:
            yaml.SafeLoader.__init__(self, stream)
            self._start_counting()


def load(text: str | bytes, max_bytes: int = MAX_BYTES) -> Any:
    """`yaml.safe_load(text)` with the limits above; YAMLError (one short line) when refused."""
    if len(text) > max_bytes:
        raise YAMLLimitError(f"larger than {max_bytes} bytes (refused)")
    loader = BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:  # belt and braces: the depth limit should make this unreachable
        raise YAMLLimitError("nested too deeply (refused)") from None
    finally:
        loader.dispose()


def describe_error(e: yaml.YAMLError) -> str:
    """One short line for a YAML error: `line N: problem`, never the input's text around it."""
    if isinstance(e, YAMLLimitError):
        return _clip(str(e), 150)
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    problem = "; ".join(str(x) for x in parts if x) or e.__class__.__name__
    return where + _clip(problem, 120)


def _clip(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."
