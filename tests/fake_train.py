"""A stand-in for `python -m bnexp.train` used by the sweep-mechanics tests (fast, no torch import).

It accepts the same override syntax and writes the run-dir files of the contract. Behaviour is chosen by the
variant, so a sweep can mix healthy, diverging, crashing and slow runs:
  +variant=crash   writes a "running" summary, then dies with a traceback (like an invalid stat_groups would)
  +variant=slow    like a healthy run but sleeps $FAKE_TRAIN_SLEEP seconds (default 30) while "running"
                   (an env var, not an override, so it does not change the sweep's run dir)
  +variant=diverge ends with status diverged
  anything else    finishes with final_test_acc = 0.5 + lr/10 + seed/100
"""
import json
import os
import sys
import time
from pathlib import Path

from bnexp.orphan_guard import die_with_parent


def parse(argv):
    values = {}
    for argument in argv:
        key, _, value = argument.partition("=")
        values[key.lstrip("+")] = value.strip("'")
    return values


def main():
    die_with_parent()  # as bnexp.train does: a run started by the sweep ends with it
    args = parse(sys.argv[1:])
    run_dir = Path(args["hydra.run.dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    variant = args.get("variant", "correct_bn")
    lr = float(args.get("optim.lr", 0.1))
    seed = int(args.get("seed", 0))
    config = {"variant": {"name": variant, "stat_groups": None}, "model": {"name": "fake", "width": 1.0},
              "data": {"name": "synthetic"}, "optim": {"name": "sgd", "lr": lr}, "seed": seed}
    (run_dir / "config.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    summary = {"status": "running", "variant": variant, "model": "fake", "lr": lr, "seed": seed,
               "data_source": "synthetic", "final_test_acc": None, "error": None, "pid": os.getpid()}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with open(run_dir / "metrics.jsonl", "w") as metrics:
        for step in range(3):
            metrics.write(json.dumps({"kind": "step", "step": step, "train/loss": 2.3 - step * 0.1}) + "\n")
    print(f"fake training {variant} lr={lr} seed={seed}", flush=True)
    if variant == "slow":
        time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", 30)))
    if variant == "crash":
        raise ValueError("stat_groups=3 must divide the channel count 8 of layer block1.norm")
    accuracy = 0.5 + lr / 10 + seed / 100
    status = "diverged" if variant == "diverge" else "finished"
    summary.update(status=status, final_test_acc=None if status == "diverged" else accuracy,
                   diverged_step=2 if status == "diverged" else None, steps_done=3, epochs_done=1)
    (run_dir / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
