"""WandbSink in offline mode: what lands in the offline run, mode selection, and one W&B run per job."""
import os
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

wandb = pytest.importorskip("wandb")

from bnexp.train import wandb_sink  # noqa: E402
from bnexp.train.wandb_sink import WandbSink, resolve_wandb_mode  # noqa: E402
from tests.support.wandb_offline import read_finished_run  # noqa: E402


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """No credentials, no network: W&B must run offline into tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "wandb_dir"


def make_cfg(variant="shared_bn", lr=0.1, seed=1):
    return OmegaConf.create(
        {
            "variant": {"name": variant, "norm": "shared"},
            "model": {"name": "airbench", "width": 0.25},
            "data": {"name": "synthetic"},
            "optim": {"name": "sgd", "lr": lr},
            "seed": seed,
            "lr_copy": "${optim.lr}",  # to_container(resolve=True): W&B sees resolved values
            "logger": {"name": "wandb", "project": "bnexp-test", "mode": "auto", "tags": ["unit"]},
        }
    )


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def log_short_run(sink, steps=3):
    for step in range(steps):
        sink.log_step({"kind": "step", "step": step, "epoch": step / steps, "train/loss": 2.0 - 0.1 * step,
                       "train/lr": 0.1, "grad_norm/global": 1.0 + step, "grad_norm/layers.0.conv": 0.5})
    sink.log_epoch({"kind": "epoch", "epoch": 1, "step": steps, "train/loss": 1.9, "train/acc": 0.3,
                    "test/loss": 1.8, "test/acc": 0.31, "train/images_per_s": 100.0})


def test_offline_run_holds_config_metrics_and_summary(offline_env, tmp_path):
    sink = WandbSink(make_cfg(), tmp_path / "run")
    log_short_run(sink)
    sink.finish({"status": "finished", "best_test_acc": 0.31, "steps_to_acc": {"0.5": None},
                 "max_grad_norm": 3.0, "init_grad_norms": {"layers.0.conv": 0.5}})

    (run_dir,) = offline_runs(offline_env)
    run = read_finished_run(run_dir)
    assert run["run"]["project"] == "bnexp-test"
    assert run["run"]["group"] == "shared_bn" and run["run"]["job_type"] == "airbench"
    assert {"unit", "shared_bn", "airbench", "synthetic"} <= set(run["run"]["tags"])
    assert run["config"]["optim"]["lr"] == 0.1 and run["config"]["lr_copy"] == 0.1
    assert run["config"]["variant"]["name"] == "shared_bn"

    step_rows = [row for row in run["history"] if "grad_norm/global" in row]
    assert [row["step"] for row in step_rows] == [0, 1, 2]
    assert all("grad_norm/layers.0.conv" in row for row in step_rows)
    epoch_row = run["history"][-1]
    # The per-epoch train loss gets its own key, so train/loss keeps one x-axis (step).
    assert epoch_row["epoch"] == 1 and epoch_row["train/epoch_loss"] == 1.9 and "train/loss" not in epoch_row

    summary = run["summary"]
    assert summary["status"] == "finished" and summary["best_test_acc"] == 0.31
    assert summary["steps_to_acc"] == {"0.5": None} and summary["init_grad_norms"] == {"layers.0.conv": 0.5}
    assert summary["test/acc"]["max"] == 0.31
    assert run["exit_code"] == 0

    axes = {m.name or m.glob_name: m.step_metric for m in run["metrics"]}
    assert axes["grad_norm/*"] == "step" and axes["test/*"] == "epoch"
    assert axes["train/loss"] == "step" and axes["train/acc"] == "epoch" and axes["train/epoch_loss"] == "epoch"


def test_two_sinks_in_one_process_make_two_runs(offline_env, tmp_path):
    """Hydra multirun runs jobs in one process: each job must get its own, finished W&B run."""
    for seed in (1, 2):
        sink = WandbSink(make_cfg(seed=seed), tmp_path / f"job{seed}")
        log_short_run(sink, steps=2)
        sink.finish({"status": "finished", "seed": seed})
    runs = [read_finished_run(path) for path in offline_runs(offline_env)]
    assert len(runs) == 2
    assert len({run["run"]["run_id"] for run in runs}) == 2
    assert sorted(run["summary"]["seed"] for run in runs) == [1, 2]
    assert all(run["exit_code"] == 0 for run in runs)


def test_exception_still_finishes_the_run_as_failed(offline_env, tmp_path):
    with pytest.raises(RuntimeError):
        with WandbSink(make_cfg(), tmp_path / "run") as sink:
            log_short_run(sink, steps=1)
            raise RuntimeError("boom mid-run")
    (run_dir,) = offline_runs(offline_env)
    run = read_finished_run(run_dir)
    assert run["exit_code"] == 1 and run["summary"]["status"] == "failed"
    assert wandb.run is None  # nothing left open for the next job


def test_wandb_dir_defaults_to_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    sink = WandbSink(make_cfg(), tmp_path / "run")
    sink.finish({"status": "finished"})
    assert len(offline_runs(tmp_path / "run")) == 1


def test_mode_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)

    assert resolve_wandb_mode("auto") == ("offline", "no W&B credentials found")
    assert resolve_wandb_mode("disabled") == ("disabled", None)
    assert resolve_wandb_mode("online") == ("online", None)
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret-key\n")
    assert resolve_wandb_mode("auto") == ("online", None)
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == ("online", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == ("offline", "WANDB_MODE=offline")
    assert resolve_wandb_mode("online") == ("online", None)  # an explicit logger.mode wins
    with pytest.raises(ValueError):
        resolve_wandb_mode("sometimes")


def test_failed_online_init_falls_back_to_offline(tmp_path, monkeypatch):
    """No network: an online init that errors (or times out) must not cost the run."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    real_init = wandb.init
    modes = []

    def init_without_network(*args, mode=None, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise wandb.errors.CommError("network unreachable (simulated)")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb_sink.wandb, "init", init_without_network)
    monkeypatch.setattr(wandb_sink, "unreachable_reason", lambda *_: None)  # as if the server answered
    cfg = make_cfg()
    cfg.logger.mode = "online"
    sink = WandbSink(cfg, tmp_path / "run")
    log_short_run(sink, steps=1)
    sink.finish({"status": "finished"})
    assert modes == ["online", "offline"] and sink.mode == "offline"
    assert len(offline_runs(tmp_path / "wandb_dir")) == 1


@pytest.mark.slow
def test_unreachable_wandb_host_falls_back_to_offline_within_the_timeout(tmp_path):
    """The real thing, not a mock: credentials, mode online, and a W&B host that refuses connections (what a
    machine without network sees). The run must go offline after logger.init_timeout, not hang or crash.
    In a subprocess, so a half-started online W&B session cannot leak into the other tests."""
    import subprocess
    import sys

    script = f"""
import sys
from omegaconf import OmegaConf
from bnexp.train.wandb_sink import WandbSink
cfg = OmegaConf.create({{"variant": {{"name": "no_bn"}}, "model": {{"name": "airbench"}}, "optim": {{"lr": 0.1}},
                        "seed": 0, "logger": {{"name": "wandb", "project": "bnexp-test", "mode": "online",
                                              "init_timeout": 8}}}})
sink = WandbSink(cfg, {str(tmp_path / "run")!r})
sink.log_step({{"step": 0, "train/loss": 1.5}})
sink.finish({{"status": "finished"}})
print("MODE", sink.mode)
"""
    env = repo_env({"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "a" * 40,
           "WANDB_DIR": str(tmp_path / "wandb_dir"), })
    env.pop("WANDB_MODE", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MODE offline" in result.stdout
    assert "logging offline" in result.stderr and "wandb sync" in result.stdout
    assert len(offline_runs(tmp_path / "wandb_dir")) == 1
    assert time.monotonic() - started < 180


def test_disabled_mode_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    cfg = make_cfg()
    cfg.logger.mode = "disabled"
    sink = WandbSink(cfg, tmp_path / "run")
    log_short_run(sink, steps=1)
    sink.finish({"status": "finished"})
    assert offline_runs(tmp_path / "wandb_dir") == []
    assert os.environ.get("WANDB_MODE") is None


# ---------------------------------------------------------------------- through the trainer
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from bnexp.train.run import train  # noqa: E402
from tests.helpers import REPO, TINY_RUN, compose_config, repo_env  # noqa: E402



def local_records(run_dir: Path):
    """metrics.jsonl without the timing fields (which differ between any two runs)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k != "train/images_per_s"} for record in records]


@pytest.mark.slow
def test_trainer_run_with_wandb_matches_local_files(offline_env, tmp_path):
    overrides = ["+variant=shared_bn", *TINY_RUN, "seed=3", "instrument.every=2"]
    train(compose_config([*overrides, "logger=wandb"]), str(tmp_path / "with_wandb"))
    train(compose_config(overrides), str(tmp_path / "local_only"))

    # logger=none and logger=wandb leave the same local files and numbers.
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (tmp_path / "local_only" / name).is_file() and (tmp_path / "with_wandb" / name).is_file()
    assert local_records(tmp_path / "with_wandb") == local_records(tmp_path / "local_only")
    local_summary = json.loads((tmp_path / "with_wandb" / "summary.json").read_text())
    assert local_summary["status"] == "finished"

    (offline_dir,) = offline_runs(offline_env)
    run = read_finished_run(offline_dir)
    assert run["config"]["variant"]["name"] == "shared_bn" and run["config"]["instrument"]["every"] == 2
    assert run["config"]["bnexp_provenance"] == local_summary["provenance"]
    assert run["run"]["group"] == "shared_bn" and run["run"]["job_type"] == "airbench"
    grad_rows = [row for row in run["history"] if "grad_norm/global" in row]
    assert [row["step"] for row in grad_rows] == [0, 2]
    assert any(key.startswith("grad_norm/") and key != "grad_norm/global" for key in grad_rows[0])
    assert any(key.startswith("bn/") for key in grad_rows[0]) and any(key.startswith("act/") for key in grad_rows[0])
    assert any("test/acc" in row for row in run["history"])
    for field in ("status", "best_test_acc", "max_grad_norm", "steps_to_acc", "init_grad_norms", "train_loss_auc"):
        assert run["summary"][field] == local_summary[field], field
    assert run["exit_code"] == 0


class ExplodingSink:
    """Fails on the second step record, as a crash mid-run would."""

    def __init__(self):
        self.calls = 0

    def log_step(self, record):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("simulated crash mid-run")

    def log_epoch(self, record):
        pass

    def finish(self, summary):
        pass


@pytest.mark.slow
def test_exception_mid_run_finishes_wandb_and_writes_failed_summary(offline_env, tmp_path):
    cfg = compose_config(["+variant=correct_bn", *TINY_RUN, "logger=wandb"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, str(tmp_path / "run"), extra_sinks=[ExplodingSink()])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "simulated crash" in summary["error"]
    (offline_dir,) = offline_runs(offline_env)
    run = read_finished_run(offline_dir)
    assert run["exit_code"] == 1 and run["summary"]["status"] == "failed"
    assert wandb.run is None


@pytest.mark.slow
def test_hydra_multirun_makes_one_wandb_run_per_job(tmp_path):
    env = repo_env({"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir")})
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "bnexp.train", "-m", "+variant=torch_bn", *TINY_RUN, "seed=1,2", "logger=wandb",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb sync" in result.stdout + result.stderr  # the offline hint
    runs = [read_finished_run(path) for path in offline_runs(tmp_path / "wandb_dir")]
    assert len(runs) == 2 and len({run["run"]["run_id"] for run in runs}) == 2
    assert sorted(run["config"]["seed"] for run in runs) == [1, 2]
    assert all(run["exit_code"] == 0 and run["summary"]["status"] == "finished" for run in runs)
    assert len(list((tmp_path / "sweep").glob("*/summary.json"))) == 2
