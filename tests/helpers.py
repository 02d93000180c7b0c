"""What the tests share: the repository's root, the environment for a subprocess that imports this checkout,
composing the real Hydra configs, the tiny training run, and run dirs written as the trainer writes them."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bnexp.config.compose import compose_train_config
from bnexp.runs.files import read_metrics

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"

# The smallest run that still exercises every part of the loop: 4 steps on a narrow net.
TINY_RUN = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.125",
            "train.epochs=1", "train.batch_size=64", "train.eval_batch_size=64", "train.log_every=2"]


def compose_config(overrides: list[str]):
    return compose_train_config(overrides)


def repo_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a subprocess that must import this checkout's bnexp (and tests/)."""
    return {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


def step_and_epoch_records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl of a run dir, read by bnexp's own reader, split into step and epoch records."""
    records = read_metrics(run_dir)
    return [r for r in records if r["kind"] == "step"], [r for r in records if r["kind"] == "epoch"]


LAYERS = ["stem.conv", "block1.conv1", "block1.norm1", "head.linear"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run_dir(run_dir: Path, variant: str, lr: float, seed: int, *, status: str = "finished",
                 final_test_acc: float | None = 0.5, stat_groups: int | None = None, model: str = "airbench",
                 instrumented: bool = True, hydra_layout: bool = False,
                 data_source: str = "CIFAR-10 JPEG copy (cifar10-jpeg.tar.xz)", steps: int = 6,
                 extra_config: dict | None = None, provenance: dict | None = None, role: str | None = None,
                 tuning: dict | None = None) -> Path:
    """A run dir as the trainer writes it (README "Outputs"), with made-up but internally consistent numbers.
    `role` (and `tuning`): a best_lr sweep's record of the run in sweep_job.json ("tune" or "final")."""
    run_dir.mkdir(parents=True)
    norm = {"grouped_bn": "grouped", "no_bn": "none", "shared_bn": "shared"}.get(variant, "per_channel")
    config = {"variant": {"name": variant, "norm": norm, "stat_groups": stat_groups},
              "model": {"name": model, "width": 0.25}, "data": {"name": "cifar10_folder", "train_size": 256},
              "optim": {"name": "sgd", "lr": lr, "momentum": 0.9}, "train": {"epochs": 1, "batch_size": 64},
              "seed": seed, **(extra_config or {})}
    config_path = run_dir / (".hydra/config.yaml" if hydra_layout else "config.yaml")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config))
    with open(run_dir / "metrics.jsonl", "w") as metrics:
        for step in range(steps):
            record = {"kind": "step", "step": step, "epoch": step / steps, "train/loss": 2.3 / (1 + step * lr),
                      "train/lr": lr, "grad_norm/global": 1.0 + step}
            if instrumented:
                record.update({f"grad_norm/{name}": (index + 1) * (step + 1) * 0.1
                               for index, name in enumerate(LAYERS)})
            metrics.write(json.dumps(record) + "\n")
        metrics.write(json.dumps({"kind": "epoch", "epoch": 1, "step": steps, "test/acc": final_test_acc}) + "\n")
    summary = {"status": status, "variant": variant, "model": model, "lr": lr, "seed": seed,
               "data_source": data_source, "final_test_acc": final_test_acc, "best_test_acc": final_test_acc,
               "epochs_done": 1, "steps_done": steps, "wall_time_s": 3.0, "images_per_s": 100.0,
               "diverged_step": 3 if status == "diverged" else None, "error": None}
    if instrumented:
        summary.update({"max_grad_norm": 10.0 * lr + seed, "max_grad_norm_layer": "head.linear",
                        "steps_to_acc": {"0.5": 4 + seed if (final_test_acc or 0) >= 0.5 else None, "0.7": None},
                        "train_loss_auc": 1.0, "grad_norm_ratio_first_last": 0.5,
                        "init_grad_norms": {name: 0.1 * (i + 1) for i, name in enumerate(LAYERS)}})
    if provenance is not None:
        summary["provenance"] = provenance
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if role is not None:
        record = {"run_id": run_dir.name, "variant": variant, "model": model, "lr": lr, "seed": seed, "role": role,
                  **({"tuning": tuning} if tuning is not None else {})}
        (run_dir / "sweep_job.json").write_text(json.dumps(record))
    return run_dir


# --- sweeps: the command line in a subprocess, and its status file

def run_sweep_cli(arguments: list[str], env_extra: dict | None = None, timeout: float = 120,
                  background: bool = False):
    command = [sys.executable, "-m", "bnexp.sweep", *arguments]
    env = repo_env(env_extra)
    if background:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_status(out_dir: Path) -> dict:
    return json.loads((out_dir / "sweep_status.json").read_text())


@contextlib.contextmanager
def background_sweep(arguments: list[str], env_extra: dict | None = None):
    """A sweep CLI process in the background, killed on the way out if the test left it running."""
    process = run_sweep_cli(arguments, env_extra=env_extra, background=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for(predicate, timeout: float = 60, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
