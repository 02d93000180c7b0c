"""The sweep config's schema: every rule refuses its bad values with one line naming the key and a valid example,
the defaults fill what a sweep config leaves out, and the command line stops before anything is written."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from bnexp.config.compose import ConfigError
from bnexp.config.sweep_schema import check_sweep_config, count_problem, count_setting, lr_search_range
from bnexp.sweep.grid import compose_sweep_config
from tests.helpers import run_sweep_cli


def problems_of(*overrides: str, sweep: str = "smoke") -> list[str]:
    with pytest.raises(ConfigError) as raised:
        compose_sweep_config([f"sweep={sweep}", *overrides])
    return str(raised.value).splitlines()


@pytest.mark.parametrize("override, key", [
    ("sweep.workers=0", "sweep.workers"),
    ("sweep.threads_per_worker=2.5", "sweep.threads_per_worker"),
    ("sweep.gpus=3", "sweep.gpus"),
    ("sweep.timeout_s=0", "sweep.timeout_s"),
    ("sweep.timeout_s=inf", "sweep.timeout_s"),
    ("sweep.train_module='python -m x'", "sweep.train_module"),
    ("sweep.models=[resnet]", "sweep.models"),
    ("sweep.seeds=[0,0]", "sweep.seeds"),
    ("sweep.seeds=[-1]", "sweep.seeds"),
    ("sweep.seeds=[zero]", "sweep.seeds"),
    ("sweep.name=''", "sweep.name"),
    ("+sweep.mode=bisect", "sweep.mode"),
    ("+sweep.lr_search_ratio=1", "sweep.lr_search_ratio"),
    ("+sweep.lr_search_growth=0.5", "sweep.lr_search_growth"),
    ("+sweep.trains_min_acc=2", "sweep.trains_min_acc"),
    ("sweep.variants=null", "sweep.variants"),
    ("+sweep.variants.bad=['data.train_size=[1,']", "sweep.variants.bad"),
    ("sweep.train_overrides=['data.train_size=[1,']", "sweep.train_overrides"),
])
def test_each_rule_refuses_with_one_line_naming_the_key_and_an_example(override: str, key: str):
    (problem,) = problems_of(override)
    assert problem.startswith(f"{key}=") and "; e.g. sweep." in problem, problem
    example = problem.split("; e.g. ")[1]
    assert example.startswith(key.rsplit(".", 1)[0] if key.endswith(".bad") else key), problem


def test_every_problem_is_listed_and_an_unknown_key_gets_a_did_you_mean():
    problems = problems_of("+sweep.worker=2", "sweep.workers=-1", "sweep.seeds=[1.5]")
    assert problems[0] == "sweep.worker is not a sweep config key; did you mean sweep.workers?"
    assert problems[1].startswith("sweep.workers=-1 must be a whole number of at least 1, or auto")
    assert problems[2].startswith("sweep.seeds=[1.5] is not a list of integers")


def test_rules_between_keys():
    (unknown,) = problems_of("sweep.only_variants=[correct_bn,typo_bn]")
    assert unknown.startswith("sweep.only_variants names unknown variants ['typo_bn']")
    # the start lr defaults to the grid's smallest lr (0.05 here), which a floor of 0.1 excludes
    (lr_range,) = problems_of("+sweep.lr_search_min=0.1")
    assert "lr_search_min <= lr_search_start <= lr_search_max" in lr_range and "0.1, 0.05" in lr_range


def test_defaults_fill_what_a_sweep_config_leaves_out():
    cfg = compose_sweep_config(["sweep=lr_stability"])  # no mode, no lr_search_* keys
    assert cfg.mode == "grid" and cfg.lr_search_ratio is None and cfg.timeout_s == 3600
    assert lr_search_range(cfg) == (0.0125, 1e-4, 100.0)  # the grid's smallest lr, lr_search's floor and cap
    study = compose_sweep_config(["sweep=cpu_mechanism"])
    assert lr_search_range(study) == (0.05, 0.001, 12.8)
    filled, problems = check_sweep_config({"name": "mine", "out_dir": "x", "variants": {"a": None},
                                           "lrs": [0.1], "seeds": [0]})
    assert problems == [] and filled["workers"] == "auto" and filled["train_module"] == "bnexp.train"
    _, problems = check_sweep_config({"name": "mine"})
    assert problems == ["sweep.out_dir is not set; e.g. sweep.out_dir=outputs/sweeps/my_sweep",
                        "sweep.variants is not set; e.g. sweep.variants={correct_bn:[+variant=correct_bn]}",
                        "sweep.lrs is not set; e.g. sweep.lrs=[0.05,0.2,0.8]",
                        "sweep.seeds is not set; e.g. sweep.seeds=[0,1,2]"]


def _is_whole_count(value) -> bool:
    """The oracle: an int or float (never a bool) with no fractional part, at least 1."""
    return (type(value) in (int, float) and math.isfinite(value) and value == math.floor(value) and value >= 1)


@given(st.one_of(st.integers(-5, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                 st.text(max_size=4), st.none()))
def test_a_count_is_a_whole_number_of_at_least_one_or_auto(value):
    accepted = count_problem(value) is None
    assert accepted == (value is None or _is_whole_count(value))
    if accepted and value is not None:
        assert count_setting(OmegaConf.create({"workers": value}), "workers") == int(value)
    elif not accepted:
        with pytest.raises(ConfigError, match=r"^sweep\.workers=.* must be a whole number of at least 1, or auto"):
            count_setting({"workers": value}, "workers")


@pytest.mark.parametrize("arguments, message", [
    (["sweep.lr_search_ratio=1"], "sweep.lr_search_ratio=1 is too small (must be above 1)"),
    (["sweep.worker=2"], "sweep.worker is not a sweep config key; did you mean sweep.workers?"),
    (["sweep.slurm.partion=gpu"], "sweep.slurm.partion is not a sweep config key; did you mean sweep.slurm.partition?"),
])
def test_the_command_says_what_is_wrong_in_one_line_before_writing_anything(arguments: list[str], message: str,
                                                                            tmp_path):
    out_dir = tmp_path / "sweep"
    for extra in ([], ["--dry-run"], ["--print-config"]) if arguments == ["sweep.lr_search_ratio=1"] else ([],):
        result = run_sweep_cli(["sweep=cpu_mechanism", f"sweep.out_dir={out_dir}", *arguments, *extra])
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"bnexp.sweep: error: {message}") and "Traceback" not in result.stderr, line
        assert not out_dir.exists()


def test_a_key_the_sweep_config_leaves_out_is_added_with_a_plus(tmp_path):
    result = run_sweep_cli(["sweep=lr_stability", "sweep.mode=largest_lr", "--dry-run"])
    assert result.returncode == 2
    assert result.stderr.strip() == ("bnexp.sweep: error: sweep.mode is not in this sweep config; add it with a plus: "
                                     "+sweep.mode=largest_lr")


@pytest.mark.parametrize("arguments, lines", [
    (["sweep=cpu_mechanism", "sweep.mode=edge"],
     ["sweep.mode=edge was renamed sweep.mode=largest_lr (the search for the largest trainable lr; 'edge of "
      "stability' now means sharpness reaching the optimiser's threshold)"]),
    (["sweep=lr_stability", "sweep.mode=edge"], ["sweep.mode=edge was renamed sweep.mode=largest_lr"]),
    (["sweep=cpu_mechanism", "sweep.edge_ratio=2"],
     ["sweep.edge_ratio was renamed sweep.lr_search_ratio (it sets the search for the largest trainable lr); "
      "give sweep.lr_search_ratio=2"]),
    (["sweep=lr_stability", "+sweep.mode=edge", "+sweep.edge_start_lr=0.1", "+sweep.edge_min_acc=0.3"],
     ["sweep.edge_start_lr was renamed sweep.lr_search_start", "sweep.edge_min_acc was renamed sweep.trains_min_acc",
      "sweep.mode=edge was renamed sweep.mode=largest_lr"]),
])
def test_the_old_names_of_the_largest_lr_search_say_what_they_were_renamed_to(arguments, lines, tmp_path):
    out_dir = tmp_path / "sweep"
    result = run_sweep_cli([*arguments, f"sweep.out_dir={out_dir}", "--dry-run"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    said = result.stderr.strip().splitlines()
    assert len(said) == len(lines), said
    for line, expected in zip(said, lines):
        assert line.startswith(f"bnexp.sweep: error: {expected}"), line
    assert not out_dir.exists()


def test_a_sweep_config_file_with_the_old_keys_is_told_the_new_ones():
    _, problems = check_sweep_config({"name": "mine", "out_dir": "x", "variants": {"a": None}, "lrs": [0.1],
                                      "seeds": [0], "mode": "edge", "edge_ratio": 2, "edge_max_lr": 3.2})
    assert problems == [
        "sweep.edge_ratio was renamed sweep.lr_search_ratio (it sets the search for the largest trainable lr)",
        "sweep.edge_max_lr was renamed sweep.lr_search_max (it sets the search for the largest trainable lr)",
        "sweep.mode=edge was renamed sweep.mode=largest_lr (the search for the largest trainable lr; 'edge of "
        "stability' now means sharpness reaching the optimiser's threshold)"]


@pytest.mark.parametrize("overrides, problem", [
    (["sweep.seeds=[0,100]"], "sweep.tune_seeds and sweep.seeds share [100]: the fresh seeds at the best lr must not "
                              "be the seeds that chose it (selection bias); e.g. sweep.tune_seeds=[100] "
                              "sweep.seeds=[0,1,2]"),
    (["sweep.tune_seeds=[]"], "sweep.tune_seeds=[] is empty: sweep.mode=best_lr tunes each variant's lr on these "
                              "seeds; "
                              "e.g. sweep.tune_seeds=[100] "
     "(+sweep.tune_seeds=[100] where the sweep config leaves the key out)"),
    (["sweep.tune_seeds=null"], "sweep.tune_seeds is not set: sweep.mode=best_lr tunes each variant's lr on these "
                                "seeds; e.g. sweep.tune_seeds=[100] "
     "(+sweep.tune_seeds=[100] where the sweep config leaves the key out)"),
    (["sweep.lrs=[]"], "sweep.lrs=[] is empty: sweep.mode=best_lr tunes over at least one lr; "
                       "e.g. sweep.lrs=[0.05,0.2,0.8]"),
    (["sweep.seeds=[]"], "sweep.seeds=[] is empty: a sweep needs at least one seed; e.g. sweep.seeds=[0,1,2]"),
    (["sweep.tune_growth=1"], "sweep.tune_growth=1 is too small (must be above 1); e.g. sweep.tune_growth=2"),
    (["sweep.tune_growth=0.5"], "sweep.tune_growth=0.5 is too small (must be above 1); e.g. sweep.tune_growth=2"),
    (["sweep.tune_seeds=[100,100]"], "sweep.tune_seeds=[100,100] repeats a value; list each once; "
                                     "e.g. sweep.tune_seeds=[100]"),
    (["sweep.lr_search_min=0.1"], "sweep.lrs holds [0.05], outside the tuning's bounds sweep.lr_search_min=0.1 and "
                                  "sweep.lr_search_max=3.2; widen the bounds or move the lrs"),
])
def test_the_best_lr_modes_rules_each_refuse_in_one_line(overrides, problem):
    assert problems_of(*overrides, sweep="best_lr_smoke") == [problem]


def test_the_best_lr_example_config_is_valid_and_its_bounds_default_around_the_grid():
    from bnexp.config.sweep_schema import best_lr_range

    cfg = compose_sweep_config(["sweep=best_lr_smoke"])
    assert cfg.mode == "best_lr" and list(cfg.tune_seeds) == [100] and best_lr_range(cfg) == (0.0125, 3.2)
    # without bounds: bnexp/lr_search/best_lr.py's, widened to take in the grid
    assert best_lr_range({"lrs": [0.05, 200.0]}) == (1e-4, 200.0)
    # a grid sweep need not set tune_seeds, and may share them with seeds (it ignores them)
    assert compose_sweep_config(["sweep=best_lr_smoke", "sweep.mode=grid", "sweep.tune_seeds=[0]"]).mode == "grid"
