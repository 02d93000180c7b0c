"""End-to-end runs: every variant trains a few steps and leaves complete run files."""
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bnexp.data.dataset import DatasetError
from bnexp.train.run import train
from tests.helpers import REPO, SHARED_ARCHIVE, TINY_RUN, compose_config, repo_env, step_and_epoch_records

SUMMARY_FIELDS = {"status", "variant", "model", "lr", "seed", "data_source", "final_test_acc", "best_test_acc",
                  "epochs_done", "steps_done", "wall_time_s", "images_per_s", "diverged_step", "error", "provenance"}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["correct_bn", "shared_bn", "grouped_bn", "no_bn", "torch_bn"])
def test_each_variant_runs_and_writes_files(variant, tmp_path):
    cfg = compose_config([f"+variant={variant}", *TINY_RUN])
    summary = train(cfg, str(tmp_path))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert SUMMARY_FIELDS <= set(on_disk)
    assert on_disk["status"] == "finished" and on_disk["variant"] == variant
    assert on_disk["steps_done"] == 4 and on_disk["epochs_done"] == 1
    assert 0.0 <= on_disk["final_test_acc"] <= 1.0 and on_disk["images_per_s"] > 0
    assert (tmp_path / "config.yaml").read_text().count(f"name: {variant}") == 1
    steps, epochs = step_and_epoch_records(tmp_path)
    assert [r["step"] for r in steps] == [0, 2]  # one record per log interval
    for record in steps:
        assert {"train/loss", "train/lr", "grad_norm/global", "epoch"} <= set(record)
        assert record["grad_norm/global"] > 0 and math.isfinite(record["train/loss"])
    assert len(epochs) == 1
    assert {"train/loss", "train/acc", "test/loss", "test/acc", "train/images_per_s"} <= set(epochs[0])


@pytest.mark.slow
def test_same_seed_reproduces_the_run(tmp_path):
    cfg = compose_config(["+variant=shared_bn", *TINY_RUN, "seed=5"])
    first = train(cfg, str(tmp_path / "a"))
    second = train(cfg, str(tmp_path / "b"))
    assert step_and_epoch_records(tmp_path / "a")[0] == step_and_epoch_records(tmp_path / "b")[0]
    assert first["final_test_acc"] == second["final_test_acc"]


def test_huge_lr_is_recorded_as_diverged(tmp_path):
    cfg = compose_config(["+variant=no_bn", *TINY_RUN, "data.train_size=640", "optim.lr=1e4",
                          "optim.warmup_frac=0", "train.epochs=2"])
    summary = train(cfg, str(tmp_path))
    assert summary["status"] == "diverged"
    assert isinstance(summary["diverged_step"], int) and 0 < summary["diverged_step"] < 20
    assert json.loads((tmp_path / "summary.json").read_text())["diverged_step"] == summary["diverged_step"]
    assert step_and_epoch_records(tmp_path)[0]  # the metrics up to the divergence are kept


def test_missing_dataset_is_a_clear_error_and_a_failed_summary(tmp_path):
    cfg = compose_config(["data=cifar10_folder", f"data.path={tmp_path / 'nowhere.tar.xz'}", *TINY_RUN[1:]])
    with pytest.raises(DatasetError, match=r"does not exist.*data=cifar10.*data=synthetic"):
        train(cfg, str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "does not exist" in summary["error"]


@pytest.mark.slow
def test_cli_runs_and_reports_errors_without_traceback(tmp_path):
    env = repo_env()
    ok = subprocess.run([sys.executable, "-m", "bnexp.train", "+variant=grouped_bn", "variant.stat_groups=2",
                         *TINY_RUN, f"hydra.run.dir={tmp_path / 'ok'}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["status"] == "finished"
    assert "step/s" in ok.stderr or "s/step" in ok.stderr  # the progress bar shows a rate

    bad = subprocess.run([sys.executable, "-m", "bnexp.train", "data=cifar10_folder",
                          f"data.path={tmp_path / 'missing'}", f"hydra.run.dir={tmp_path / 'bad'}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def _multirun(sweep_dir: Path, lrs: str, subdir: str) -> subprocess.CompletedProcess:
    """`python -m bnexp.train -m` of the tiny run over `lrs`, with Hydra's basic launcher."""
    return subprocess.run([sys.executable, "-m", "bnexp.train", "-m", *TINY_RUN, f"optim.lr={lrs}",
                           f"hydra.sweep.dir={sweep_dir}", f"hydra.sweep.subdir={subdir}"], cwd=REPO,
                          env=repo_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_multirun_runs_every_job_then_exits_2_naming_the_failed_ones(tmp_path):
    """A job with a user error does not stop the others (basic launcher: jobs in this process), but the
    multirun's exit code says that not all went well, with the count and the failed jobs' run dirs."""
    result = _multirun(tmp_path, "-1,0.05", "job${hydra.job.num}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    failed, finished = tmp_path / "job0", tmp_path / "job1"
    assert json.loads((failed / "summary.json").read_text())["status"] == "failed"
    assert json.loads((finished / "summary.json").read_text())["status"] == "finished"
    last_line = result.stderr.strip().splitlines()[-1]
    assert re.search(r"^bnexp\.train: error: 1 of 2 multirun jobs failed", last_line), last_line
    assert str(failed) in last_line and str(finished) not in last_line


@pytest.mark.slow
def test_multirun_counts_jobs_not_run_dirs(tmp_path):
    """Jobs that share a run dir (a subdir without the job number) are still counted one by one."""
    result = _multirun(tmp_path, "-1,-2", "same")
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert re.search(r"^bnexp\.train: error: 2 of 2 multirun jobs failed", last_line), last_line


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason="needs ../shared/data/cifar10-jpeg.tar.xz")
def test_short_run_on_the_jpeg_archive(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config(["data=cifar10_folder", f"data.path={SHARED_ARCHIVE}", f"data.data_dir={cache_dir}",
                          *TINY_RUN[1:], "data.train_size=512", "data.test_size=256"])
    summary = train(cfg, str(run_dir))
    assert summary["status"] == "finished" and "JPEG" in summary["data_source"]
    assert summary["steps_done"] == 8
    assert list(cache_dir.glob("*.npz"))  # decoded once, cached


@pytest.mark.slow
def test_correct_bn_trains_exactly_like_the_torch_bn_control(tmp_path):
    """Our per-channel layer changes nothing: same seed, same losses as stock nn.BatchNorm2d."""
    summaries = {}
    for variant in ("correct_bn", "torch_bn"):
        cfg = compose_config([f"+variant={variant}", *TINY_RUN, "train.log_every=1"])
        summaries[variant] = train(cfg, str(tmp_path / variant))
    ours, control = (step_and_epoch_records(tmp_path / v)[0] for v in ("correct_bn", "torch_bn"))
    assert len(ours) == len(control) == 4
    for mine, theirs in zip(ours, control):
        assert mine["train/loss"] == pytest.approx(theirs["train/loss"], rel=1e-4)
        assert mine["grad_norm/global"] == pytest.approx(theirs["grad_norm/global"], rel=1e-3)


def test_non_finite_values_nested_in_the_summary_are_written_as_null(tmp_path):
    from bnexp.train.sinks import LocalSink
    sink = LocalSink(tmp_path, "x: 1\n", {"status": "running"})
    sink.finish({"status": "diverged", "init_grad_norms": {"stem.0": float("nan"), "head": 1.5},
                 "history": [float("inf"), 2.0]})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == {"status": "diverged", "init_grad_norms": {"stem.0": None, "head": 1.5}, "history": [None, 2.0]}


@pytest.mark.slow
def test_sigterm_stops_a_run_cleanly_and_keeps_its_files(tmp_path):
    import signal
    import time
    env = repo_env()
    run_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "bnexp.train", *TINY_RUN, "train.epochs=500",
                                f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().strip()):  # wait for the first logged step
        assert time.time() < deadline, "the run never logged a step"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143
    assert "Traceback" not in stderr and "stopped" in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("killed")
    assert step_and_epoch_records(run_dir)[0]  # the steps logged before the kill are kept


@pytest.mark.slow
def test_forced_bf16_autocast_and_channels_last_reach_the_norm_layers(tmp_path, monkeypatch):
    """The CUDA defaults (bf16 autocast, channels_last) run the same code on the CPU when forced on."""
    import torch

    import bnexp.train.loop as trainer_module
    from bnexp.norm import BatchNorm2d

    seen_inputs = []
    real_build_model = trainer_module.build_model

    def build_and_watch(*args, **kwargs):
        model = real_build_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, BatchNorm2d):
                module.register_forward_hook(lambda mod, inputs, out: seen_inputs.append(
                    (inputs[0].dtype, inputs[0].is_contiguous(memory_format=torch.channels_last),
                     out.dtype, mod.running_mean.dtype)))
        return model

    monkeypatch.setattr(trainer_module, "build_model", build_and_watch)
    forced = compose_config(["+variant=shared_bn", *TINY_RUN, "train.amp=true", "train.channels_last=true"])
    assert train(forced, str(tmp_path / "forced"))["status"] == "finished"
    assert seen_inputs and set(seen_inputs) == {(torch.bfloat16, True, torch.bfloat16, torch.float32)}

    seen_inputs.clear()
    default = compose_config(["+variant=shared_bn", *TINY_RUN])  # auto: both off on the CPU
    assert train(default, str(tmp_path / "default"))["status"] == "finished"
    assert set(seen_inputs) == {(torch.float32, False, torch.float32, torch.float32)}
    forced_losses = [r["train/loss"] for r in step_and_epoch_records(tmp_path / "forced")[0]]
    default_losses = [r["train/loss"] for r in step_and_epoch_records(tmp_path / "default")[0]]
    assert forced_losses[0] == pytest.approx(default_losses[0], rel=0.05)  # same model, bf16 rounding only
    assert forced_losses != default_losses


def test_bad_device_feature_setting_is_a_clear_error(tmp_path):
    cfg = compose_config([*TINY_RUN, "train.amp=sometimes"])
    with pytest.raises(ValueError, match=r"train.amp='sometimes'.*auto.*true.*false"):
        train(cfg, str(tmp_path))


@pytest.mark.slow
def test_torch_compile_run_matches_the_eager_run(tmp_path):
    """train.compile=true with inductor (C++ on the CPU): same losses as eager, throughput without compile time."""
    eager = compose_config(["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN, "train.epochs=2"])
    compiled = compose_config(["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN, "train.epochs=2",
                               "train.compile=true"])
    eager_summary = train(eager, str(tmp_path / "eager"))
    compiled_summary = train(compiled, str(tmp_path / "compiled"))
    assert compiled_summary["status"] == eager_summary["status"] == "finished"
    eager_steps, compiled_steps = step_and_epoch_records(tmp_path / "eager")[0], step_and_epoch_records(tmp_path / "compiled")[0]
    assert len(eager_steps) == len(compiled_steps) == 4
    for mine, theirs in zip(compiled_steps, eager_steps):
        assert mine["train/loss"] == pytest.approx(theirs["train/loss"], rel=1e-3)
    compiled_epochs = step_and_epoch_records(tmp_path / "compiled")[1]
    # the summary's rate skips epoch 1, which holds the compile time (the summary rounds it to 0.1 image/s)
    assert compiled_summary["images_per_s"] == pytest.approx(compiled_epochs[1]["train/images_per_s"], abs=0.051)
    assert compiled_summary["images_per_s"] > compiled_epochs[0]["train/images_per_s"]


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", r"train.batch_size=0 is too small"),
    ("train.epochs=0", r"train.epochs=0 is too small"),
    ("train.epochs=abc", r"train.epochs='abc' is not an integer"),
    ("model.width=abc", r"model.width='abc' is not a number"),
    ("optim.lr=abc", r"optim.lr='abc' is not a number"),
    ("divergence.loss_factor=0.5", r"divergence.loss_factor=0.5 is too small"),
    ("train.eval_batch_size=0", r"train.eval_batch_size=0 is too small"),
    ("device=tpu", r"device='tpu'.*device=auto, cpu, cuda"),
])
def test_bad_config_values_name_the_key_and_leave_a_failed_summary(override, message, tmp_path):
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from bnexp.config.compose import describe_composition_error
    try:
        cfg = compose_config([*TINY_RUN, override])
    except ConfigCompositionException as error:
        # A value of the wrong type stops Hydra's composition (the schema types every key), naming the key; a
        # config built in Python, without the schema, is refused by train() with the same message.
        assert re.search(message, describe_composition_error(error))
        cfg = OmegaConf.create(OmegaConf.to_container(compose_config(TINY_RUN)))
        OmegaConf.update(cfg, override.split("=")[0], override.split("=", 1)[1])
    with pytest.raises(ValueError, match=message):
        train(cfg, str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and override.split("=")[0] in summary["error"]


@pytest.mark.slow
def test_divergence_at_the_end_of_an_epoch_is_pinned_to_its_step(tmp_path):
    """The last, partial log window of an epoch is read back at the epoch's end: with log_every longer than
    the epoch, the diverged step is still the step whose loss blew up, and its step records are kept."""
    overrides = ["+variant=no_bn", *TINY_RUN, "data.train_size=640", "optim.lr=1e4", "optim.warmup_frac=0",
                 "train.epochs=2"]
    every_step = train(compose_config([*overrides, "train.log_every=1"]), str(tmp_path / "every_step"))
    one_window = train(compose_config([*overrides, "train.log_every=1000"]), str(tmp_path / "one_window"))
    assert every_step["status"] == one_window["status"] == "diverged"
    assert one_window["diverged_step"] == every_step["diverged_step"] < 10
    steps, _ = step_and_epoch_records(tmp_path / "one_window")
    assert [r["step"] for r in steps] == [0]  # the one window, from step 0


@pytest.mark.slow
def test_a_second_run_in_the_same_dir_replaces_the_first_runs_metrics(tmp_path, capsys):
    cfg = compose_config(["+variant=shared_bn", *TINY_RUN])
    train(cfg, str(tmp_path))
    first = (tmp_path / "metrics.jsonl").read_text()
    assert "already holds a run" not in capsys.readouterr().err
    train(cfg, str(tmp_path))
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_text().count('"kind": "epoch"') == 1
    assert len(first.splitlines()) == len((tmp_path / "metrics.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_every_log_window_record_has_the_global_grad_norm_when_epochs_do_not_divide_into_windows(tmp_path):
    """5 steps per epoch, windows of 2: windows restart at each epoch end (steps 0, 2, 4, 5, 7, 9), and each
    window's record carries grad_norm/global measured at its first step."""
    cfg = compose_config(["+variant=correct_bn", *TINY_RUN, "data.train_size=320", "train.epochs=2",
                          "instrument.every=0"])
    summary = train(cfg, str(tmp_path))
    steps, _ = step_and_epoch_records(tmp_path)
    assert [r["step"] for r in steps] == [0, 2, 4, 5, 7, 9]
    assert all(r["grad_norm/global"] > 0 for r in steps)
    # the loss AUC (tracked with the probe's measurements off) is the mean over every step of the logged windows
    window_sizes = [2, 2, 1, 2, 2, 1]
    assert summary["train_loss_auc"] == pytest.approx(
        sum(size * r["train/loss"] for size, r in zip(window_sizes, steps)) / 10, rel=1e-6)


@pytest.mark.slow
def test_logger_none_runs_without_wandb_installed(tmp_path):
    """A fresh process where `import wandb` fails before any bnexp module loads: logger=none must still train."""
    script = (
        "import sys, json\n"
        "sys.modules['wandb'] = None  # `import wandb` now raises ImportError\n"
        "from bnexp.config.compose import compose_train_config\n"
        "from bnexp.train.run import train\n"
        f"summary = train(compose_train_config({['+variant=no_bn', 'logger=none', *TINY_RUN]!r}), {str(tmp_path)!r})\n"
        "print('STATUS', summary['status'])\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=repo_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "STATUS finished" in result.stdout


class SinkFailingToFinish:
    """A sink whose upload fails at the end; with `crash_in_epoch`, the run itself crashes first."""

    def __init__(self, crash_in_epoch: bool):
        self.crash_in_epoch = crash_in_epoch

    def log_step(self, record):
        pass

    def log_epoch(self, record):
        if self.crash_in_epoch:
            raise RuntimeError("simulated crash in the epoch")

    def finish(self, summary):
        raise OSError("simulated upload failure")


def test_a_sink_failing_to_finish_does_not_replace_the_runs_own_error(tmp_path, capsys):
    cfg = compose_config(["+variant=no_bn", *TINY_RUN])
    with pytest.raises(RuntimeError, match="simulated crash in the epoch"):
        train(cfg, str(tmp_path), extra_sinks=[SinkFailingToFinish(crash_in_epoch=True)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "simulated crash in the epoch" in summary["error"]
    assert "SinkFailingToFinish.finish: OSError: simulated upload failure" in summary["sink_error"]
    assert "simulated upload failure" in capsys.readouterr().err


def test_a_sink_failing_to_finish_a_good_run_is_raised_and_noted(tmp_path):
    cfg = compose_config(["+variant=no_bn", *TINY_RUN])
    with pytest.raises(OSError, match="simulated upload failure"):
        train(cfg, str(tmp_path), extra_sinks=[SinkFailingToFinish(crash_in_epoch=False)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["error"] is None
    assert "simulated upload failure" in summary["sink_error"]


class SinkKilledWhileFinishing:
    """A sink whose finish() is where a SIGTERM lands: after the run trained, while its end is being written."""

    def log_step(self, record):
        pass

    def log_epoch(self, record):
        pass

    def finish(self, summary):
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_kill_while_the_end_is_written_leaves_a_failed_run_not_a_finished_one(tmp_path):
    from bnexp.train.run import RunInterrupted

    cfg = compose_config(["+variant=no_bn", *TINY_RUN])
    with pytest.raises(RunInterrupted):
        train(cfg, str(tmp_path), extra_sinks=[SinkKilledWhileFinishing()])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("killed: RunInterrupted"), summary
    assert summary["steps_done"] == 256 // 64  # the training itself ran through (TINY_RUN: one epoch)


def test_images_per_s_is_each_epochs_own_rate_and_the_summary_the_runs(tmp_path, monkeypatch, capsys):
    """An epoch record's rate is its images over its own seconds; the summary's is all images over all seconds.
    The loop's clock is replaced by one that makes epoch 1 last 2 s and epoch 2 last 8 s."""
    import types

    ticks = iter([0.0, 2.0, 10.0, 18.0])  # epoch 1 from 0 to 2, epoch 2 from 10 to 18
    monkeypatch.setattr("bnexp.train.loop.time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    cfg = compose_config(["+variant=no_bn", *TINY_RUN, "train.epochs=2"])
    summary = train(cfg, str(tmp_path))
    _, epochs = step_and_epoch_records(tmp_path)
    images_per_epoch = 256  # TINY_RUN: 256 training images, 64 a batch, no partial batch
    assert [epoch["train/images_per_s"] for epoch in epochs] == [images_per_epoch / 2.0, images_per_epoch / 8.0]
    assert summary["images_per_s"] == round(2 * images_per_epoch / 10.0, 1)
    console = capsys.readouterr().out  # the epoch lines name their epoch and its rate
    assert re.search(r"^epoch 1/2: .* 128 img/s$", console, re.M)
    assert re.search(r"^epoch 2/2: .* 32 img/s$", console, re.M)


def test_provenance_says_what_produced_the_run(tmp_path):
    import platform

    import torch

    cfg = compose_config(["+variant=no_bn", *TINY_RUN, "train.epochs=0"])  # even a run that fails at once
    with pytest.raises(ValueError):
        train(cfg, str(tmp_path))
    recorded = json.loads((tmp_path / "summary.json").read_text())["provenance"]
    assert set(recorded) == {"bnexp_version", "git_commit", "git_dirty", "python", "torch", "triton", "cuda",
                             "device"}
    assert recorded["python"] == platform.python_version() and recorded["torch"] == str(torch.__version__)
    assert recorded["cuda"] == torch.version.cuda
    if torch.cuda.is_available():  # device=auto
        assert recorded["device"] == torch.cuda.get_device_name()
    else:
        assert recorded["device"].startswith("CPU (")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # run from a checkout
        assert recorded["git_commit"] == head.stdout.strip() and isinstance(recorded["git_dirty"], bool)


def test_git_state_of_a_checkout_a_dirty_one_and_none(tmp_path, monkeypatch):
    from bnexp.runs.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    assert git_state(tmp_path) == (None, None)  # not a checkout
    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-q", "-m", "a")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("run output")
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "a.txt").write_text("b")
    assert git_state(tmp_path) == (commit, True)
    (tmp_path / "sub").mkdir()
    assert git_state(tmp_path / "sub") == (None, None)  # inside another repository: not bnexp's checkout
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert git_state(tmp_path) == (None, None)  # no git at all: no error either


@pytest.mark.slow
def test_the_overhead_benchmark_runs_the_trainers_step(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--width", "0.125",
                             "--batch-size", "8", "--every", "2", "--log-every", "2", "--blocks", "1", "--warmup", "2",
                             "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ratio = float(result.stdout.split("step-time ratio: ")[1].split()[0])
    assert ratio > 0 and "blocks=1x2 steps" in result.stdout and "measure step:" in result.stdout
