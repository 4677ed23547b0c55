"""The params machinery: type-checked overrides, unknown keys rejected with a suggestion, nested sections."""
import dataclasses
import subprocess
import sys
from typing import Literal, Optional

import pytest
import yaml

from pipeline.config import ParamsError, apply_overrides, build, describe, load_section, param


@dataclasses.dataclass
class Inner:
    k: int = param(5, "results per search")
    mode: Literal["live", "cache_first", "replay_only"] = param("cache_first", "cache mode")


@dataclasses.dataclass
class Outer:
    samples: int = param(4, "rollouts per item")
    temperature: float = param(1.0, "sampling temperature")
    name: str = param("demo", "a name")
    flag: bool = param(False, "a switch")
    tags: list[str] = param(["a"], "a list")
    limit: Optional[int] = param(None, "optional cap")
    inner: Inner = param(factory=Inner, help="nested section")
    sources: dict[str, Inner] = param({}, "named sub-sections")

    def validate(self):
        if self.samples < 1:
            raise ValueError("samples must be >= 1")


def test_defaults_and_nested_build():
    p = build(Outer, {"inner": {"k": 3}, "sources": {"x": {"mode": "live"}}})
    assert p.inner.k == 3 and p.inner.mode == "cache_first"
    assert p.sources["x"].mode == "live" and p.sources["x"].k == 5


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sampels": 3}, "did you mean 'samples'"),
        ({"inner": {"kx": 1}}, "'inner.kx'; did you mean 'inner.k'"),
        ({"mode": "live"}, "'mode'; did you mean 'inner.mode'"),
        ({"samples": "3"}, "expected an integer"),
        ({"samples": True}, "expected an integer"),
        ({"temperature": "hot"}, "expected a number"),
        ({"flag": 1}, "expected true/false"),
        ({"tags": "a"}, "expected a list"),
        ({"inner": {"mode": "offline"}}, "not one of"),
        ({"inner": {"kk": 1}}, "inner.kk"),
        ({"samples": 0}, "samples must be >= 1"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ParamsError, match=message):
        build(Outer, values)


def test_int_widens_to_float_and_optional_accepts_both():
    p = build(Outer, {"temperature": 1, "limit": 7})
    assert isinstance(p.temperature, float) and p.limit == 7
    assert build(Outer, {"limit": None}).limit is None


def test_overrides_are_yaml_typed_and_accept_section_prefix(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"probe": {"samples": 2, "inner": {"k": 1}}}))
    p = load_section(Outer, "probe", path, ["probe.samples=8", "inner.k=9", "flag=true", "tags=[x, y]", "limit=null"])
    assert (p.samples, p.inner.k, p.flag, p.tags, p.limit) == (8, 9, True, ["x", "y"], None)
    with pytest.raises(ParamsError, match="samples"):
        load_section(Outer, "probe", path, ["samples=many"])
    with pytest.raises(ParamsError, match="key=value"):
        apply_overrides({}, ["samples"])


def test_missing_section_and_file_are_explained(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("other: {}\n")
    with pytest.raises(ParamsError, match="no 'probe' section"):
        load_section(Outer, "probe", path)
    with pytest.raises(ParamsError, match="not found"):
        load_section(Outer, "probe", tmp_path / "nope.yaml")


def test_describe_lists_nested_keys_with_help():
    rows = {k: h for k, _, h in describe(Outer)}
    assert rows["inner.k"] == "results per search" and rows["samples"] == "rollouts per item"


def test_cli_lists_stages_and_rejects_unknown_stage():
    out = subprocess.run([sys.executable, "-m", "stages", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "gather" in out.stdout and "train" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "stages", "gahter"], capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'gather'" in bad.stderr
