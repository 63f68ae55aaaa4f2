"""yaml12 parses with libyaml when PyYAML has it: the same values, and the same errors as
PyYAML's own parser (message, line, snippet)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mlx_plugins.kernel import yaml12

REPO = Path(__file__).resolve().parents[2]
needs_libyaml = pytest.mark.skipif(
    len(yaml12._LOADERS) < 2, reason="PyYAML was built without libyaml"
)

SCALARS = """
a: off
b: 0123
c: 0o17
d: 0x1F
e: 1_000
f: 12:30
g: 2013-01-01
h:
i: .inf
j: -.INF
k: ~
l: TRUE
m: 1e3
n: !!timestamp 2013-01-01
o: [1, "2", y]
p: {q: no}
"""


@needs_libyaml
def test_libyaml_reads_yaml12_scalars_as_pyyaml_does():
    fast = yaml.load(SCALARS, Loader=yaml12._LOADERS[-1])
    slow = yaml.load(SCALARS, Loader=yaml12.Yaml12Loader)
    assert fast == slow
    assert fast["a"] == "off" and fast["b"] == 123 and fast["g"] == "2013-01-01"
    assert fast["h"] is None and math.isinf(fast["i"]) and fast["p"] == {"q": "no"}


@needs_libyaml
@pytest.mark.parametrize(
    "path",
    [REPO / "mlx.yaml", *sorted((REPO / "mlx_assets" / "defs").glob("*/defs.yaml"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_the_repository_files_read_the_same(path):
    text = path.read_text()
    assert yaml12.load(text) == yaml.load(text, Loader=yaml12.Yaml12Loader)


@pytest.mark.parametrize(
    "text",
    ["a: 1\na: 2\n", "a: [1, 2\nb: 3\n", "a:\n  - b\n c: d\n"],
    ids=["repeated key", "unclosed flow", "bad indent"],
)
def test_errors_are_pyyaml_s_own(text):
    with pytest.raises(yaml.YAMLError) as slow:
        yaml.load(text, Loader=yaml12.Yaml12Loader)
    with pytest.raises(yaml.YAMLError) as got:
        yaml12.load(text)
    assert str(got.value) == str(slow.value)
    assert "line" in str(got.value)
