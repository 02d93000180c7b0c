"""Past one machine: Hydra launcher configs (joblib, submitit/SLURM) and the W&B sweep file.

Each launcher config must compose with conf/train.yaml; joblib and submitit's local executor really run two tiny
jobs whose dirs the report reads; the SLURM config renders a valid sbatch script through submitit itself
(with a stand-in `srun` on PATH: the tests submit nothing to a cluster).
"""
from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import bnexp.config.schema  # noqa: F401  (registers the schemas conf/train.yaml extends, as the CLI does)
from tests.helpers import REPO, repo_env

CONF_DIR = REPO / "conf"
TINY_RUN = ["optim.lr=0.05", "seed=0", "data=synthetic", "data.train_size=128", "data.test_size=64",
            "model.width=0.125", "train.epochs=1", "train.batch_size=64"]


def compose_train(overrides: list[str], hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_config)


@pytest.mark.parametrize("launcher, plugin, target", [
    ("bnexp_joblib", "hydra_plugins.hydra_joblib_launcher", "JoblibLauncher"),
    ("bnexp_slurm", "hydra_plugins.hydra_submitit_launcher", "SlurmLauncher"),
])
def test_launcher_config_composes(launcher: str, plugin: str, target: str, tmp_path: Path):
    pytest.importorskip(plugin)
    cfg = compose_train([f"hydra/launcher={launcher}", "+variant=shared_bn", f"hydra.sweep.dir={tmp_path}"],
                        hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    if launcher == "bnexp_slurm":
        assert launcher_cfg["gpus_per_node"] == 1 and launcher_cfg["submitit_folder"].startswith(str(tmp_path))
    else:
        assert launcher_cfg["n_jobs"] == 2 and launcher_cfg["prefer"] == "processes"


def test_slurm_config_renders_an_sbatch_script(tmp_path: Path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    srun = fake_bin / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")  # submitit only checks that srun exists
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    cfg = compose_train(["hydra/launcher=bnexp_slurm", "hydra.launcher.partition=gpu",
                         f"hydra.sweep.dir={tmp_path}/multirun", "hydra.job.name=bnexp"], hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    # the same mapping the plugin applies before submitting (hydra_submitit_launcher.submitit_launcher)
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base_keys = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base_keys else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m bnexp.train", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=60", "#SBATCH --job-name=bnexp"):
        assert line in script


def _multirun(launcher_overrides: list[str], sweep_dir: Path) -> subprocess.CompletedProcess:
    env = repo_env({"OMP_NUM_THREADS": "1"})
    command = [sys.executable, "-m", "bnexp.train", "-m", *launcher_overrides, "+variant=correct_bn,no_bn",
               *TINY_RUN, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("launcher, plugin", [
    (["hydra/launcher=bnexp_joblib"], "hydra_plugins.hydra_joblib_launcher"),
    (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"], "hydra_plugins.hydra_submitit_launcher"),
])
def test_launcher_really_runs_and_report_reads_the_dirs(launcher: list[str], plugin: str, tmp_path: Path):
    pytest.importorskip(plugin)
    result = _multirun(launcher, tmp_path / "multirun")
    assert result.returncode == 0, result.stderr[-3000:]
    from bnexp.report import records

    runs = records.discover_runs([tmp_path / "multirun"])
    assert sorted(run.variant for run in runs) == ["correct_bn", "no_bn"]
    assert all(run.status in ("finished", "diverged") for run in runs)


def _agent_command(sweep_file: dict, values: dict) -> list[str]:
    """The argv a `wandb agent` builds for one grid point (wandb.wandb_agent.Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(interpreter=["python"], env=["/usr/bin/env"], program=[sweep_file["program"]])
    argv: list[str] = []
    for chunk in sweep_file["command"]:
        chunk = str(chunk)
        argv += sweep_vars.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return argv


@pytest.mark.slow
def test_wandb_sweep_file_renders_commands_that_compose():
    pytest.importorskip("wandb")
    sweep_file = yaml.safe_load((CONF_DIR / "wandb" / "sweep.yaml").read_text())
    assert sweep_file["method"] == "grid" and "${args_no_hyphens}" in sweep_file["command"]
    parameters = sweep_file["parameters"]
    assert set(parameters) == {"+variant", "optim.lr", "seed"}
    lr_stability = yaml.safe_load((CONF_DIR / "sweep" / "lr_stability.yaml").read_text())
    assert parameters["optim.lr"]["values"] == lr_stability["lrs"]
    assert parameters["seed"]["values"] == lr_stability["seeds"]

    names = list(parameters)
    for combination in itertools.product(parameters["+variant"]["values"], parameters["optim.lr"]["values"], [0]):
        argv = _agent_command(sweep_file, dict(zip(names, combination)))
        assert argv[:4] == ["/usr/bin/env", "python", "-m", "bnexp.train"]
        cfg = compose_train(argv[4:])
        assert cfg.variant.name == combination[0] and cfg.optim.lr == combination[1]
        assert cfg.logger.name == "wandb"
