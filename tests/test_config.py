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


# ---------------------------------------------------------------------------------------------------------------
# shared sections: the `rollout:` section read by bootstrap, probe, train and evaluate
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Shared:
    SHARED_SECTION = "common"

    k: int = param(0, "results per call")
    inner: Inner = param(factory=Inner, help="nested shared settings")


@dataclasses.dataclass
class Stage(Shared):
    RENAMED = {"num_generations": "samples"}

    samples: int = param(4, "rollouts per item")


def test_shared_section_fills_the_stage_and_the_stage_overrides_key_by_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"common": {"k": 2, "inner": {"k": 7, "mode": "live"}},
                                    "a": {"samples": 3}, "b": {"k": 5, "inner": {"mode": "replay_only"}}}))
    a, b = load_section(Stage, "a", path), load_section(Stage, "b", path)
    assert (a.k, a.inner.k, a.inner.mode, a.samples) == (2, 7, "live", 3)
    assert (b.k, b.inner.k, b.inner.mode, b.samples) == (5, 7, "replay_only", 4)  # inner.k still the shared one
    c = load_section(Stage, "a", path, ["common.k=9", "inner.mode=cache_first"])
    assert (c.k, c.inner.k, c.inner.mode) == (9, 7, "cache_first")
    path.write_text(yaml.safe_dump({"a": {}}))  # no shared section: the defaults
    assert load_section(Stage, "a", path).k == 0


@pytest.mark.parametrize("doc, overrides, message", [
    ({"common": {"kk": 1}, "a": {}}, [], "unknown parameter 'common.kk'; did you mean 'common.k'"),
    ({"common": {"inner": {"mode": "x"}}, "a": {}}, [], "common.inner.mode"),
    ({"common": {}, "a": {}}, ["common.k=many"], "common.k: expected an integer"),
    ({"common": [1], "a": {}}, [], "'common' section must be a mapping"),
    ({"common": {}, "a": {"num_generations": 8}}, [], "'a.num_generations': it is called 'a.samples' here"),
])
def test_shared_section_is_checked_whoever_reads_it(tmp_path, doc, overrides, message):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ParamsError, match=message):
        load_section(Stage, "a", path, overrides)


def test_describe_marks_shared_keys():
    rows = {k: h for k, _, h in describe(Stage)}
    assert rows["k"] == "[common] results per call" and rows["inner.mode"] == "[common] cache mode"
    assert rows["samples"] == "rollouts per item"


def test_every_rollout_stage_reads_the_rollout_section_of_params_yaml(tmp_path):
    """bootstrap, probe, train and evaluate take protocol, limits, search_k and judge from `rollout:`; K is called
    `samples` in each; --help lists every key a stage reads, the shared ones marked."""
    import importlib
    from pathlib import Path

    from pipeline.rollout.config import RolloutParams

    root = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((root / "params.yaml").read_text())
    doc["rollout"].update({"search_k": 3, "limits": {"max_turns": 4}, "judge": {"method": "f1"}})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    for stage in ("bootstrap", "probe", "train", "evaluate"):
        module = importlib.import_module(f"stages.{stage}")
        assert issubclass(module.Params, RolloutParams)
        for key in ("protocol", "limits", "search_k", "judge"):
            assert key not in doc[stage], f"{stage} repeats rollout.{key}"
        p = load_section(module.Params, stage, path)
        assert (p.search_k, p.limits.max_turns, p.limits.max_text_search, p.judge.method) == (3, 4, 2, "f1"), stage
        if stage != "bootstrap":
            assert "samples" in {f.name for f in dataclasses.fields(module.Params)}
        out = subprocess.run([sys.executable, "-m", "stages", stage, "--help"], capture_output=True, text=True,
                             cwd=root)
        assert out.returncode == 0, out.stderr
        for key, _, _ in describe(module.Params):
            assert f"  {key} = " in out.stdout, (stage, key)
        assert "[rollout] results per search call" in out.stdout
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage in ("bootstrap", "probe", "train", "evaluate"):  # `dvc exp run -S rollout.search_k=...` re-runs them
        spec = dvc[stage].get("do", dvc[stage])
        assert "rollout" in spec["params"] and stage in spec["params"], stage


def test_exponent_floats_that_yaml_reads_as_strings_are_numbers():
    """`learning_rate: 2e-5` (no dot) is a string to PyYAML (YAML 1.1), as is what `dvc exp run -S` writes; a float
    field takes it, and a word is still refused."""
    import dataclasses

    import yaml

    from pipeline.config import ParamsError, build, param

    @dataclasses.dataclass
    class P:
        lr: float = param(1.0, help="x")

    assert yaml.safe_load("lr: 2e-05")["lr"] == "2e-05"
    assert build(P, yaml.safe_load("lr: 2e-05")).lr == 2e-05
    assert build(P, {"lr": "-1E+3"}).lr == -1000.0
    with pytest.raises(ParamsError, match="expected a number"):
        build(P, {"lr": "fast"})
