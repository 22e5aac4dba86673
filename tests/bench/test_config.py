from pathlib import Path

import pytest

from bench.config import RunConfig, apply_overrides, load_yaml, parse_contamination, parse_set
from bench.errors import ConfigError


def test_overrides_are_typed_and_nested():
    config = apply_overrides(RunConfig(), parse_set(("pgt.n_groups=3", "seed=7", "refiner_options.ard.steps=5", "out=/tmp/x")))
    assert config.pgt.n_groups == 3 and config.seed == 7
    assert config.refiner_options == {"ard": {"steps": 5}}
    assert config.out == Path("/tmp/x")


def test_contamination_sweep_is_parsed():
    assert parse_contamination("0,0.1, 0.5") == (0.0, 0.1, 0.5)
    assert apply_overrides(RunConfig(), {"pgt.contamination": "0,0.2"}).pgt.contamination == (0.0, 0.2)
    with pytest.raises(ConfigError, match="--contamination"):
        parse_contamination("a,b")


@pytest.mark.parametrize("key,value,needle", [
    ("pgt.group_size", -1, "pgt.group_size=-1"),
    ("pgt.contamination", "0,1.5", "pgt.contamination"),
    ("pgt.pseudo_normal_fraction", 0, "pgt.pseudo_normal_fraction"),
    ("pgt.warmup", "always", "pgt.warmup"),
    ("device", "tpu", "device"),
])
def test_bad_values_name_the_option(key, value, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        apply_overrides(RunConfig(), {key: value}).validate()


def test_unknown_key_and_bad_set_syntax():
    with pytest.raises(ConfigError, match="unknown config key 'pgt.groups'"):
        apply_overrides(RunConfig(), {"pgt.groups": 2})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(("n_groups",))
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(RunConfig(), {"seed": "abc"})


def test_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 4\npgt:\n  n_groups: 2\nrefiner_options:\n  ard: {steps: 3}\n")
    config = apply_overrides(RunConfig(), load_yaml(path))
    assert (config.seed, config.pgt.n_groups, config.refiner_options["ard"]["steps"]) == (4, 2, 3)
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(tmp_path / "bad.yaml")


def test_params_are_flat_strings():
    params = RunConfig().to_params()
    assert params["pgt.n_groups"] == "4" and params["seed"] == "0"


def test_params_are_plain_yaml_values_that_set_takes_back():
    config = RunConfig(categories="a,b", refiner_options={"ard": {"steps": 3}})
    params = config.to_params()
    assert params["pgt.contamination"] == "[0.0]" and params["backbone"] == "null" and params["cache"] == "true"
    assert params["refiner_options.ard.steps"] == "3" and params["method_options"] == "{}"
    assert not any(v.startswith("(") or v == "None" for v in params.values())
    again = apply_overrides(RunConfig(), parse_set(tuple(f"{k}={v}" for k, v in params.items() if k != "method_options")))
    assert again.to_params() == params


def test_config_yaml_reads_back_to_the_same_config(tmp_path):
    config = RunConfig(data_root=Path("/data/x"), seed=3, pgt=RunConfig().pgt.__class__(contamination=(0.0, 0.2)),
                       method_options={"musc": {"r_list": [1, 3]}})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert apply_overrides(RunConfig(), load_yaml(path)).to_params() == config.to_params()


def test_every_synthesis_option_is_a_pgt_synth_key_set_validated_and_logged(tmp_path):
    config = apply_overrides(RunConfig(), parse_set((
        "pgt.synth.recipes=[texture,pattern]", "pgt.synth.perlin_scale_range=1,4", "pgt.synth.threshold=0.3",
        "pgt.synth.beta_range=[0.5,1]", "pgt.synth.min_area_fraction=0.01", "pgt.synth.max_area_fraction=0.2",
        f"pgt.synth.texture_dir={tmp_path}", "pgt.synth.foreground=border")))
    synth = config.pgt.synth
    assert synth.recipes == ("texture", "pattern") and synth.perlin_scale_range == (1, 4)
    assert synth.beta_range == (0.5, 1.0) and synth.threshold == 0.3 and synth.foreground == "border"
    params = config.to_params()
    assert {k for k in params if k.startswith("pgt.synth.")} == {f"pgt.synth.{f}" for f in (
        "recipes", "perlin_scale_range", "threshold", "beta_range", "min_area_fraction", "max_area_fraction",
        "texture_dir", "foreground")}
    assert params["pgt.synth.recipes"] == "[texture, pattern]"
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("pgt:\n  synth:\n    recipes: [cutpaste]\n    threshold: 0.2\n")
    config = apply_overrides(RunConfig(), load_yaml(yaml_file))
    assert config.pgt.synth.recipes == ("cutpaste",) and config.pgt.synth.threshold == 0.2


@pytest.mark.parametrize("item,needle", [
    ("pgt.synth.recipes=[sparkles]", "pgt.synth.recipes"),
    ("pgt.synth.threshold=abc", "pgt.synth.threshold"),
    ("pgt.synth.perlin_scale_range=[1,2,3]", "pgt.synth.perlin_scale_range"),
    ("pgt.synth.perlin_scale_range=[a,b]", "pgt.synth.perlin_scale_range"),
    ("pgt.synth.max_area_fraction=2", "pgt.synth.min_area_fraction"),
    ("pgt.synth.foreground=magic", "pgt.synth.foreground"),
    ("pgt.synth.texture_dir=/no/such/dtd", "pgt.synth.texture_dir"),
    ("pgt.synth.colour=1", "pgt.synth.colour"),
])
def test_bad_synthesis_options_name_the_pgt_synth_key(item, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        apply_overrides(RunConfig(), parse_set((item,))).validate()


def test_the_old_texture_dir_key_still_works_with_one_deprecation_line(tmp_path):
    with pytest.warns(FutureWarning, match=r"^pgt\.texture_dir is deprecated; use pgt\.synth\.texture_dir$"):
        config = apply_overrides(RunConfig(), {"pgt.texture_dir": str(tmp_path)})
    assert config.pgt.synth.texture_dir == str(tmp_path)
