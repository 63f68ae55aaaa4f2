"""YAML read with YAML 1.2 core-schema rules, so what a person wrote is what the platform gets.

PyYAML follows YAML 1.1, where ``off``/``no``/``y`` are booleans, ``0123`` is octal (83),
``1_000`` is 1000, ``12:30`` is the sexagesimal 750 and ``2013-01-01`` becomes a ``date``.
:func:`load` resolves plain scalars by the YAML 1.2 core schema instead:

================================  ====================================================
written                           read as
================================  ====================================================
``true``, ``false`` (any case     ``bool``; ``on``/``off``/``yes``/``no``/``y``/``n``
of ``True``/``TRUE``)             stay strings
``null``, ``~``, nothing          ``None``
``123``, ``-5``, ``0123``         ``int`` in base 10 (``0123`` is 123)
``0o17``, ``0x1F``                ``int`` in base 8 / 16
``1.5``, ``1e3``, ``.inf``,       ``float``
``.nan``
anything else (``1_000``,         ``str``, exactly as written
``12:30``, ``2013-01-01``)
================================  ====================================================

A mapping that repeats a key is an error (YAML 1.2 requires unique keys; PyYAML keeps the
last one silently). Explicit tags (``!!timestamp``) still work. Environment overrides
(``MLX__A__B=value``) are read with the same rules, through :func:`load_scalar`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_CORE_TAGS = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:value",
}


class _Yaml12Rules(SafeConstructor):
    """The YAML 1.2 constructors and the repeated-key check, shared by both loaders below."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen and key != "<<":
                raise ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice (first {seen[key].start_mark.line + 1}); "
                    "keep one of them",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml12_bool(self, node: ScalarNode) -> bool:
        return str(self.construct_scalar(node)).lower() == "true"

    def construct_yaml12_int(self, node: ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)

    def construct_yaml12_float(self, node: ScalarNode) -> float:
        text = str(self.construct_scalar(node)).lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        if text == ".nan":
            return float("nan")
        return float(text)


class Yaml12Loader(_Yaml12Rules, yaml.SafeLoader):
    """A ``yaml.SafeLoader`` whose implicit scalar types are the YAML 1.2 core schema's."""


_CSafeLoader: Any = getattr(yaml, "CSafeLoader", None)  # PyYAML built with libyaml
_LOADERS: list[Any] = [Yaml12Loader]
if _CSafeLoader is not None:

    class _Yaml12CLoader(_Yaml12Rules, _CSafeLoader):  # type: ignore[misc]
        """The same rules over libyaml's parser (about 20x faster than PyYAML's pure-Python
        one: the code location parses mlx.yaml and every instance's defs.yaml at load)."""

    _LOADERS.append(_Yaml12CLoader)

for _loader in _LOADERS:
    # Start from SafeLoader's resolvers minus the YAML 1.1 scalar ones, then add the 1.2 ones.
    _loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _CORE_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for _tag, _rx, _first in (
        ("tag:yaml.org,2002:bool", _BOOL, "tTfF"),
        ("tag:yaml.org,2002:null", _NULL, "~nN"),
        ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
        ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
    ):
        _loader.add_implicit_resolver(_tag, _rx, list(_first))
    # The empty plain scalar (``key:`` with nothing after it) is null.
    _loader.add_implicit_resolver("tag:yaml.org,2002:null", _NULL, [""])
    _loader.add_constructor("tag:yaml.org,2002:bool", _loader.construct_yaml12_bool)
    _loader.add_constructor("tag:yaml.org,2002:int", _loader.construct_yaml12_int)
    _loader.add_constructor("tag:yaml.org,2002:float", _loader.construct_yaml12_float)


def load(text: str) -> Any:
    """Parse one YAML document with YAML 1.2 core-schema scalars.

    Returns dicts, lists, str, int, float, bool and None (no ``date``: dates stay strings).
    Raises ``yaml.YAMLError`` (with line and column) for bad syntax or a repeated key.

    Parsed with libyaml when PyYAML has it; a document it refuses is parsed again with PyYAML's
    own parser, so the error (its message, line, column and the snippet) is the one that parser
    gives.
    """
    if len(_LOADERS) > 1:
        try:
            return yaml.load(text, Loader=_LOADERS[-1])
        except yaml.YAMLError:
            pass
    return yaml.load(text, Loader=Yaml12Loader)


def load_scalar(text: str) -> Any:
    """One environment value read as YAML 1.2: ``"off"`` -> ``"off"``, ``"7"`` -> ``7``,
    ``"true"`` -> ``True``, ``""`` -> ``None``, ``"[1, 2]"`` -> ``[1, 2]``.

    A value that is not valid YAML (``"a: b: c"``) is kept as the string it is.
    """
    try:  # PyYAML's own parser: a value either parser would refuse stays text either way
        return yaml.load(text, Loader=Yaml12Loader)
    except yaml.YAMLError:
        return text


# What YAML 1.1 (and so most YAML tutorials) would have read differently, for error hints.
# Patterns compiled (and cached by ``re``) when an error first needs a hint, not at load.
YAML11_BOOLS = frozenset({"y", "yes", "n", "no", "on", "off"})
_SEXAGESIMAL = r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$"
_UNDERSCORED = r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?$"
_DATE = r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"


def yaml11_hint(value: Any) -> str | None:
    """If ``value`` (a str read by :func:`load`) would have been a number, bool or date under
    YAML 1.1, say what it is now and how to write what was probably meant; else ``None``."""
    if not isinstance(value, str):
        return None
    if value.lower() in YAML11_BOOLS:
        return (
            f"{value!r} is text (only true and false are booleans in YAML 1.2): "
            "write true or false for a yes/no field"
        )
    if "_" in value and re.match(_UNDERSCORED, value):
        return f"{value!r} is text: write the number without underscores, e.g. " + value.replace(
            "_", ""
        )
    if re.match(_SEXAGESIMAL, value):
        return f"{value!r} is text (YAML 1.2 has no base-60 numbers): write the number itself"
    if re.match(_DATE, value):
        return f"{value!r} is text: dates are written as ISO strings, YYYY-MM-DD"
    return None
