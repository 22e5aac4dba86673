"""Issue 17, options and config files: every number is validated as its type and range before any
work (never truncated), and each bad value is one ``Error:`` line that names the option."""
import pytest

from bench.config import RunConfig, apply_overrides, load_yaml, parse_set
from bench.errors import ConfigError
from bench.tracking import open_store
from hostile import fails, invoke, run_args, run_id, succeeds


@pytest.mark.parametrize("extra,needles", [
    (["--set", "seed=2.5"], ["invalid seed=2.5", "expected int"]),  # was truncated to 2, and 2 logged
    (["--seed", "-1"], ["invalid seed=-1", "an integer >= 0"]),
    (["--set", "pgt.n_groups=true"], ["invalid pgt.n_groups=True", "expected int"]),
    (["--set", "data_root=[a,b]"], ["invalid data_root=['a', 'b']", "expected one folder path"]),
    (["--set", "out="], ["invalid out=None", "expected one folder path"]),
    (["--set", "experiment="], ["invalid experiment=None", "a non-empty experiment name"]),
    (["--set", "pgt.fuse_coarse=.nan"], ["pgt.fuse_coarse=nan", "expected float"]),
    (["--contamination", "0,0"], ["--contamination '0,0'", "0.0 given twice"]),
    # found in the second round
    (["--seed", str(2**64)], [f"invalid seed={2**64}", "< 2**64"]),  # torch's ValueError after the work
    (["--set", "figures=-1"], ["invalid figures=-1", ">= 0"]),
    (["--contamination", "0.1,0.1000000001"], ["0.1 given twice"]),  # one block key: the second was skipped
    # found in the third round: logged with the run but never applied (exit 0), and a traceback
    (["--set", "refiner_options.rad.steps=40"], ["refiner_options.rad", "unknown refiner 'rad'", "Did you mean 'ard'?"]),
    (["--set", "method_options.mucs.k=1"], ["method_options.mucs", "unknown method 'mucs'", "Did you mean 'musc'?"]),
    (["--set", "pgt.n_groups.x=1"], ["unknown config key 'pgt.n_groups.x'", "pgt.n_groups is a value"]),
])
def test_bad_numbers_and_paths(base, out, extra, needles):
    fails(run_args(base, out, *extra), *needles)


def test_a_number_for_a_path_is_that_folder():
    """``--set out=5``: the folder "5" (it raised a TypeError)."""
    assert apply_overrides(RunConfig(), parse_set(("out=5",))).out.name == "5"


def test_one_number_for_the_contamination_sweep():
    """``--set pgt.contamination=0.5`` (YAML ``contamination: 0.5``) raised a TypeError."""
    assert apply_overrides(RunConfig(), parse_set(("pgt.contamination=0.5",))).pgt.contamination == (0.5,)


def test_numbers_in_exponent_notation(tmp_path):
    """Found in the fifth round: ``--set pgt.fuse_coarse=1e-1`` (and YAML ``fuse_coarse: 1e-1``) was
    refused as 'expected float' (YAML 1.1 reads an exponent without a dot as a string)."""
    config = apply_overrides(RunConfig(), parse_set(("pgt.fuse_coarse=1e-1", "seed=2e0", "pgt.synth_per_group=8")))
    assert (config.pgt.fuse_coarse, config.seed) == (0.1, 2) and type(config.seed) is int
    path = tmp_path / "run.yaml"
    path.write_text("pgt:\n  fuse_coarse: 5e-1\n  n_groups: '3'\n")
    config = apply_overrides(RunConfig(), load_yaml(path))
    assert (config.pgt.fuse_coarse, config.pgt.n_groups) == (0.5, 3)
    with pytest.raises(ConfigError, match="invalid seed=2.5"):
        apply_overrides(RunConfig(), parse_set(("seed=25e-1",)))  # still never truncated


def test_yaml_float_for_an_integer_option(base, out, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("pgt:\n  n_groups: 2.9\n")  # was truncated to 2
    fails(["run", "--config", config, *run_args(base, out)[1:]], "invalid pgt.n_groups=2.9", "expected int")


def test_yaml_that_is_not_utf8(base, out, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"seed: 1\nexperiment: caf\xe9\n")
    fails(["run", "--config", config, *run_args(base, out)[1:]], str(config), "not UTF-8", "0xe9")


def test_refiner_option_of_the_wrong_type_names_it(base, out, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("refiner_options:\n  ard: {steps: many}\n")
    fails(["run", "--config", config, "--data-root", base, "--out", out, "--refiners", "ard", "--quiet", "--no-cache",
           "--n-groups", "2", "--methods", "musc"], "refiner 'ard'", "invalid steps='many'", "expected int")


def test_refiner_none_alone_needs_no_training_group_size(base, out):
    """Groups of 2 images are too small to train a refiner on MuSc's maps (see test_bad_inputs),
    but `--refiner none` trains nothing: it runs, and its maps are the coarse ones."""
    result = succeeds(["run", "--data-root", base, "--out", out, "--refiners", "none", "--quiet", "--no-cache",
                       "--n-groups", "6", "--methods", "musc"])
    units = open_store(out).units(run_id(result))
    assert list(units.refiner) == ["none"] and 0.5 < units.pixel_auroc.iloc[0] <= 1


def test_empty_experiment_for_a_reader(base, out):
    fails(["table", "--out", out, "--experiment", ""], "--experiment ''", "the experiment name is empty")


def test_contamination_twice_in_yaml(base, out, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("pgt:\n  contamination: [0.1, 0.10]\n")
    fails(["run", "--config", config, *run_args(base, out)[1:]], "0.1 given twice")
    assert invoke(["run", "--help"]).exit_code == 0


def test_a_data_root_that_is_not_utf8(base, out, tmp_path):
    """Found in the second round: MLflow cannot store such a path (traceback after the work)."""
    import os

    root = tmp_path / os.fsdecode(b"caf\xe9")
    root.symlink_to(base)
    fails(run_args(root, out), "invalid data_root=", "not printable UTF-8")


def test_a_yaml_key_given_twice(base, out, tmp_path):
    """Found in the second round: PyYAML kept the last value silently."""
    config = tmp_path / "run.yaml"
    config.write_text("seed: 1\npgt:\n  n_groups: 2\n  n_groups: 3\n")
    fails(["run", "--config", config, *run_args(base, out)[1:]], str(config), "key 'n_groups' is given twice",
          "line 4")



def test_a_yaml_merge_key(tmp_path):
    """Found in the third round: ``<<: *anchor`` was refused ("could not determine a constructor")
    by the loader that rejects keys given twice; a key of the mapping itself overrides the merged one."""
    from bench.config import load_yaml

    config = tmp_path / "run.yaml"
    config.write_text("base: &b {n_groups: 3, pseudo_normal_fraction: 0.4}\npgt:\n  <<: *b\n  n_groups: 2\n")
    loaded = load_yaml(config)
    assert loaded["pgt.n_groups"] == 2 and loaded["pgt.pseudo_normal_fraction"] == 0.4


def test_out_inside_the_data_root(base, tmp_path):
    """Found in the third round: the first run wrote its store into the dataset, the next one failed
    on 'category artifacts has no test/ folder'; now nothing is written."""
    import shutil

    root = shutil.copytree(base, tmp_path / "tree")
    before = sorted(p.name for p in root.iterdir())
    for out in (root, root / "results"):
        fails(run_args(root, out), f"--out {out} is inside --data-root {root}")
    assert sorted(p.name for p in root.iterdir()) == before


def test_a_per_group_series_is_not_a_table_metric(base, out):
    """Found in the fifth round: `bench table --metric group_pixel_ap` showed the last PGT group's
    value, rounded to 0.4, as if it were the unit's metric (exit 0)."""
    parent = run_id(succeeds(run_args(base, out, "--methods", "musc")))
    fails(["table", "--out", out, "--runs", parent, "--metric", "group_pixel_ap"], "'group_pixel_ap' is a series",
          "logged metrics: image_ap,")
    succeeds(["table", "--out", out, "--runs", parent, "--metric", "pixel_ap"])
