"""The YAML raydiff reads: PyYAML's safe loader with YAML 1.2 numbers, duplicate keys refused and
alias expansion bounded.

- Numbers as YAML 1.2 reads them (configs/README.md promises it): ``1e-3`` is a float (YAML 1.1:
  a string), ``010`` is 10 (YAML 1.1: octal 8), ``1:30`` is a string, so an integer key refuses it
  (YAML 1.1: sexagesimal 90). ``0x1F`` and ``0o17`` are integers; ``_`` separators (``10_000``)
  stay allowed, as before.
- A key written twice in one mapping is an error (PyYAML keeps the last silently).
- Aliases (``*name``) may not expand the document beyond ``ALIAS_BUDGET`` nodes: a 600-byte
  "billion laughs" file would otherwise cost minutes and gigabytes in whatever walks it next.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import yaml

#: YAML 1.2 core schema integers (plus ``_`` separators, which raydiff always accepted).
_INT_1_2 = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$")
#: YAML 1.2's float syntax, with ``.inf`` / ``.nan`` (refused later as non-finite, naming the key).
_FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"

#: Most nodes a document may expand to through its aliases (a shipped config: a few thousand).
ALIAS_BUDGET = 100_000


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (``line``/``first_line`` are 1-based)."""

    def __init__(self, key: str, first_line: int, line: int) -> None:
        super().__init__(f"key '{key}' appears twice (lines {first_line} and {line})")
        self.key, self.first_line, self.line = key, first_line, line


class AliasBudgetError(yaml.YAMLError):
    """The document's aliases expand it beyond ``ALIAS_BUDGET`` nodes (or refer to themselves)."""


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document once every alias is expanded; shared nodes are counted once per use
    but computed once (linear in the file). Stops early past the budget."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise AliasBudgetError("an alias refers to a node that contains it (a recursive document)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > ALIAS_BUDGET:
            raise AliasBudgetError(f"its aliases expand it to more than {ALIAS_BUDGET:,} nodes")
        sizes[key] = total
        return total

    return size(root)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers, duplicate keys refused and alias expansion
    bounded (see the module docstring). Merge keys (``<<: *anchor``) work as in PyYAML: a key
    written beside one overrides it."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def get_single_data(self) -> Any:
        node = self.get_single_node()  # type: ignore[no-untyped-call]
        if node is None:
            return None
        _expanded_size(node)  # before anything walks the expanded document
        return self.construct_document(node)  # type: ignore[no-untyped-call]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor``: its keys may be overridden (PyYAML merges them next)
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, typing.Hashable) and key in seen:
                raise DuplicateKeyError(str(key), seen[key], key_node.start_mark.line + 1)
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """YAML 1.2: ``010`` is ten, ``0o10`` eight (PyYAML's 1.1 constructor reads ``010`` as 8)."""
        text = str(node.value).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        return sign * int(digits, 10)


ConfigLoader.add_implicit_resolver(_INT_TAG, _INT_1_2, list("-+0123456789"))
ConfigLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_1_2, list("-+0123456789."))
ConfigLoader.add_constructor(_INT_TAG, ConfigLoader.construct_yaml_int)


def yaml_load(text: str) -> Any:
    """Parse YAML as raydiff reads configs and ``--set`` values (see :class:`ConfigLoader`)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
