"""A stand-in for `python -m bnexp.train` used by the sweep-mechanics tests (fast, no torch import).

It accepts the same override syntax and writes the run-dir files of the contract. Behaviour is chosen by the
variant, so a sweep can mix healthy, diverging, crashing and slow runs:
  +variant=crash   writes a "running" summary, then dies with a traceback (like an invalid stat_groups would)
  +variant=slow    like a healthy run but sleeps $FAKE_TRAIN_SLEEP seconds (default 30) while "running"
                   (an env var, not an override, so it does not change the sweep's run dir)
  +variant=diverge ends with status diverged
  anything else    finishes with final_test_acc = 0.5 + lr/10 + seed/100
An instability threshold per variant, for the sweep's largest_lr mode: $FAKE_TRAIN_LR_LIMITS =
"label=threshold[:collapse],..."
(label as the sweep names it: correct_bn, grouped_bn_4ch for +variant=grouped_bn_by_size
variant.channels_per_group=4, grouped_bn_g1 for +variant=grouped_bn variant.stat_groups=1). A run of that variant at
lr >= threshold diverges, or with `:collapse` finishes at chance (test acc 0.1) with a last grad norm of 0.
An accuracy that peaks at an lr per variant, for the sweep's best_lr mode: $FAKE_TRAIN_PEAKS = "label=peak_lr,...";
a run of that variant that trains finishes at peaked_accuracy(lr, peak_lr, seed): 0.1 lower per doubling away from
the peak (at least chance, 0.1), plus 0.001 x seed.
$FAKE_TRAIN_RUN_SLEEP: seconds every run sleeps while "running" (to stop a sweep midway).
"""
import json
import math
import os
import sys
import time
from pathlib import Path

from bnexp.runs.orphan_guard import die_with_parent


def parse(argv):
    values = {}
    for argument in argv:
        key, _, value = argument.partition("=")
        values[key.lstrip("+")] = value.strip("'")
    return values


def variant_label(args):
    """The variant as the sweep labels it, and its config node as the trainer would write it."""
    name = args.get("variant", "correct_bn")
    channels_per_group = args.get("variant.channels_per_group")
    stat_groups = args.get("variant.stat_groups")
    norm = {"grouped_bn": "grouped", "grouped_bn_by_size": "grouped", "shared_bn": "shared",
            "no_bn": "none"}.get(name, "per_channel")
    label = name
    if name == "grouped_bn_by_size":
        label = f"grouped_bn_{channels_per_group}ch"
    elif stat_groups is not None:
        label = f"{name}_g{stat_groups}"
    return label, {"name": name if name != "grouped_bn_by_size" else label, "norm": norm,
                   "stat_groups": None if stat_groups is None else int(stat_groups),
                   "channels_per_group": None if channels_per_group is None else int(channels_per_group)}


def lr_limit_of(label):
    """(threshold, 'diverge' | 'collapse') of this variant from $FAKE_TRAIN_LR_LIMITS, or None."""
    for entry in filter(None, os.environ.get("FAKE_TRAIN_LR_LIMITS", "").split(",")):
        name, _, rule = entry.partition("=")
        threshold, _, how = rule.partition(":")
        if name == label:
            return float(threshold), how or "diverge"
    return None


def peak_of(label):
    """The lr at which this variant's accuracy peaks, from $FAKE_TRAIN_PEAKS, or None."""
    for entry in filter(None, os.environ.get("FAKE_TRAIN_PEAKS", "").split(",")):
        name, _, peak = entry.partition("=")
        if name == label:
            return float(peak)
    return None


def peaked_accuracy(lr, peak_lr, seed):
    return max(0.1, 0.8 - 0.1 * abs(math.log2(lr / peak_lr))) + 0.001 * seed


def main():
    die_with_parent()  # as bnexp.train does: a run started by the sweep ends with it
    args = parse(sys.argv[1:])
    run_dir = Path(args["hydra.run.dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    variant = args.get("variant", "correct_bn")
    label, variant_config = variant_label(args)
    lr = float(args.get("optim.lr", 0.1))
    seed = int(args.get("seed", 0))
    limit = lr_limit_of(label)
    unstable = limit is not None and lr >= limit[0]
    collapses = unstable and limit[1] == "collapse"
    config = {"variant": variant_config, "model": {"name": "fake", "width": 1.0},
              "data": {"name": "synthetic"}, "optim": {"name": "sgd", "lr": lr}, "seed": seed}
    (run_dir / "config.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    summary = {"status": "running", "variant": variant, "model": "fake", "lr": lr, "seed": seed,
               "data_source": "synthetic", "final_test_acc": None, "error": None, "pid": os.getpid()}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with open(run_dir / "metrics.jsonl", "w") as metrics:
        for step in range(3):
            grad_norm = (0.0 if step > 0 else 1.0) if collapses else (10.0 ** (3 * step) if unstable else 1.0 + step)
            metrics.write(json.dumps({"kind": "step", "step": step, "train/loss": 2.3 - step * 0.1,
                                      "grad_norm/global": grad_norm}) + "\n")
    print(f"fake training {variant} lr={lr} seed={seed}", flush=True)
    time.sleep(float(os.environ.get("FAKE_TRAIN_RUN_SLEEP", 0)))
    if variant == "slow":
        time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", 30)))
    if variant == "crash":
        raise ValueError("stat_groups=3 must divide the channel count 8 of layer block1.norm")
    peak = peak_of(label)
    accuracy = 0.1 if collapses else 0.5 + lr / 10 + seed / 100 if peak is None else peaked_accuracy(lr, peak, seed)
    status = "diverged" if variant == "diverge" or (unstable and not collapses) else "finished"
    summary.update(status=status, final_test_acc=None if status == "diverged" else accuracy,
                   diverged_step=2 if status == "diverged" else None, steps_done=3, epochs_done=1)
    (run_dir / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
