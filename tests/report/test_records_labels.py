"""How the report labels runs read from disk: grouped variants carry their group count whatever the variant is
called, and a run that died before writing its config joins the study's model when there is only one."""
import json
from pathlib import Path

from bnexp.report import records
from bnexp.report.run_records import UNKNOWN_MODEL
from tests.helpers import make_run_dir


def test_a_grouped_variant_of_any_name_is_labelled_with_its_group_count(tmp_path: Path):
    variants = {"mine": {"name": "mine", "norm": "grouped", "stat_groups": 4},
                "grouped_bn_g8": {"name": "grouped_bn_g8", "norm": "grouped", "stat_groups": 8},
                "other": {"name": "other", "norm": "per_channel", "stat_groups": 2}}
    for seed, variant in enumerate(variants.values()):
        make_run_dir(tmp_path / variant["name"], variant["name"], 0.1, seed, extra_config={"variant": variant})
    labels = {run.run_dir.name: run.variant for run in records.discover_runs([tmp_path])}
    assert labels == {"mine": "mine_g4", "grouped_bn_g8": "grouped_bn_g8", "other": "other"}


def write_run_without_config(run_dir: Path, seed: int) -> None:
    """What the sweep leaves when the trainer died before writing config.yaml: its summary and its job."""
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "ImportError: boom"}))
    (run_dir / "sweep_job.json").write_text(json.dumps({"variant": "no_bn", "lr": 0.1, "seed": seed}))


def test_a_run_without_a_model_joins_the_only_model_of_the_study(tmp_path: Path):
    make_run_dir(tmp_path / "one" / "ok", "correct_bn", 0.1, 0, model="vgg")
    write_run_without_config(tmp_path / "one" / "died", 1)
    models = {run.run_dir.name: run.model for run in records.discover_runs([tmp_path / "one"])}
    assert models == {"ok": "vgg", "died": "vgg"}

    # with two models in the study it cannot be placed: it keeps the trainer's default name
    make_run_dir(tmp_path / "two" / "vgg", "correct_bn", 0.1, 0, model="vgg")
    make_run_dir(tmp_path / "two" / "airbench", "correct_bn", 0.1, 0, model="airbench")
    write_run_without_config(tmp_path / "two" / "died", 1)
    models = {run.run_dir.name: run.model for run in records.discover_runs([tmp_path / "two"])}
    assert models == {"vgg": "vgg", "airbench": "airbench", "died": UNKNOWN_MODEL}
