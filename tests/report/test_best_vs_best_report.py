"""The report's "Best against best" section on run dirs that carry a best_lr sweep's roles: the tuned lr and where
it sits, the fresh seeds' mean with its t-interval, the Welch difference to the reference with Holm, the trend over
group sizes, all checked against numbers worked out here by hand; tuning runs kept out of it; and the note a report
of runs without roles gives instead."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from scipy import stats

from bnexp.report import build as report
from tests.helpers import PNG_SIGNATURE, make_run_dir

BY_SIZE_4 = {"variant": {"name": "grouped_bn_4ch", "norm": "grouped", "stat_groups": None, "channels_per_group": 4}}
CORRECT_FRESH, SHARED_FRESH, GROUPED_FRESH = [0.60, 0.62, 0.64], [0.40, 0.44, 0.45], [0.50, 0.52]


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def welch(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), its 95% Welch interval and two-sided p, from the textbook formulas."""
    (mean_a, var_a), (mean_b, var_b) = [(sum(x) / len(x), sum((v - sum(x) / len(x)) ** 2 for v in x) / (len(x) - 1))
                                        for x in (a, b)]
    share_a, share_b = var_a / len(a), var_b / len(b)
    se = math.sqrt(share_a + share_b)
    df = (share_a + share_b) ** 2 / (share_a ** 2 / (len(a) - 1) + share_b ** 2 / (len(b) - 1))
    difference = mean_a - mean_b
    half = stats.t.ppf(0.975, df) * se
    return difference, difference - half, difference + half, 2 * stats.t.sf(abs(difference) / se, df)


@pytest.fixture
def best_lr_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"

    def tune(variant, lr, accuracy, status="finished", **kwargs):
        make_run_dir(root / f"{variant}_tune_{lr}", variant, lr, 100, role="tune", status=status,
                     final_test_acc=accuracy, **kwargs)

    def fresh(variant, lr, seed, accuracy, status="finished", bound=None, **kwargs):
        make_run_dir(root / f"{variant}_final_{lr}_{seed}", variant, lr, seed, role="final", status=status,
                     final_test_acc=accuracy, tuning={"chosen_lr": lr, "bound": bound}, **kwargs)

    # correct_bn: best at 0.2, inside the lrs tuned; its tuning run there did far better than its fresh seeds
    for lr, accuracy in ((0.1, 0.50), (0.2, 0.90), (0.4, 0.55)):
        tune("correct_bn", lr, accuracy)
    for seed, accuracy in enumerate(CORRECT_FRESH):
        fresh("correct_bn", 0.2, seed, accuracy)
    # shared_bn: best at 0.05, the lowest lr tuned and the sweep's bound; one fresh seed at another lr
    for lr, accuracy in ((0.05, 0.45), (0.1, 0.40), (0.2, 0.30)):
        tune("shared_bn", lr, accuracy)
    for seed, accuracy in enumerate(SHARED_FRESH):
        fresh("shared_bn", 0.05, seed, accuracy, bound="lower")
    fresh("shared_bn", 0.1, 3, 0.9)
    # 4 channels per statistic: 0.4 diverged while tuning (scores 0), so 0.2 is interior; a fresh seed diverges
    tune("grouped_bn", 0.1, 0.50, extra_config=BY_SIZE_4)
    tune("grouped_bn", 0.2, 0.55, extra_config=BY_SIZE_4)
    tune("grouped_bn", 0.4, None, status="diverged", extra_config=BY_SIZE_4)
    for seed, accuracy in enumerate(GROUPED_FRESH):
        fresh("grouped_bn", 0.2, seed, accuracy, extra_config=BY_SIZE_4)
    fresh("grouped_bn", 0.2, 2, None, status="diverged", extra_config=BY_SIZE_4)
    # no_bn: tuned at two lrs, best at the higher, no fresh seeds yet
    tune("no_bn", 0.1, 0.30)
    tune("no_bn", 0.2, 0.35)
    return root


def test_each_variant_at_its_own_best_lr_with_hand_computed_intervals_differences_holm_and_trend(best_lr_runs,
                                                                                                  tmp_path):
    out = tmp_path / "report"
    text = report.build_report([best_lr_runs], out).read_text()
    rows = {row["variant"]: row for row in read_csv(out / "best_vs_best.csv")}
    assert set(rows) == {"correct_bn", "grouped_bn_4ch", "shared_bn", "no_bn"}

    correct, shared, grouped, no_norm = (rows[v] for v in ("correct_bn", "shared_bn", "grouped_bn_4ch", "no_bn"))
    assert (correct["tuned_lr"], correct["position"], correct["lrs_tuned"]) == ("0.2", "interior", "0.1 0.2 0.4")
    assert (shared["tuned_lr"], shared["position"]) == ("0.05", "at the lower bound")
    assert (grouped["tuned_lr"], grouped["position"]) == ("0.2", "interior")
    assert grouped["tuning_acc_by_lr"] == "0.1:0.5 0.2:0.55 0.4:0"  # the diverged tuning run scores 0
    assert no_norm["tuned_lr"] == "0.2"
    assert no_norm["position"] == "at the highest lr tuned so far (tuning not finished)"
    assert no_norm["final_n"] == "0" and no_norm["difference"] == ""

    # the fresh seeds alone: 0.62 ± t(0.975, 2) · 0.02 / √3, not pooled with the tuning run's 0.90 at 0.2
    t_2 = 4.302652729911275
    assert float(correct["final_acc_mean"]) == pytest.approx(0.62)
    assert float(correct["final_acc_ci_low"]) == pytest.approx(0.62 - t_2 * 0.02 / math.sqrt(3))
    assert float(correct["final_acc_ci_high"]) == pytest.approx(0.62 + t_2 * 0.02 / math.sqrt(3))
    assert correct["final_seeds"] == "0 1 2" and correct["tune_seeds"] == "100"
    # shared_bn's seed at 0.1 is left out; grouped's diverged seed has no accuracy and is counted
    assert (shared["final_n"], shared["final_runs_left_out"]) == ("3", "1")
    assert float(shared["final_acc_mean"]) == pytest.approx(0.43)
    assert (grouped["final_n"], grouped["final_n_diverged"]) == ("2", "1")

    # Welch against correct_bn's fresh seeds, each at its own lr; Holm over the two comparisons
    p_values = {}
    for row, values in ((shared, SHARED_FRESH), (grouped, GROUPED_FRESH)):
        difference, low, high, p_value = welch(values, CORRECT_FRESH)
        assert row["reference"] == "correct_bn"
        assert float(row["difference"]) == pytest.approx(difference)
        assert (float(row["difference_ci_low"]), float(row["difference_ci_high"])) == (
            pytest.approx(low), pytest.approx(high))
        assert float(row["p_value"]) == pytest.approx(p_value)
        p_values[row["variant"]] = p_value
    smaller, larger = sorted(p_values.values())
    holm = {v: min(1.0, 2 * smaller) if p == smaller else max(min(1.0, 2 * smaller), larger)
            for v, p in p_values.items()}
    assert float(shared["p_holm"]) == pytest.approx(holm["shared_bn"])
    assert float(grouped["p_holm"]) == pytest.approx(holm["grouped_bn_4ch"])
    assert float(shared["difference"]) == pytest.approx(-0.19)

    # the trend over the fresh seeds: sizes 1 < 4 < all, every pair across sizes discordant:
    # τ-b = -21 / √((28 - 7) · 28) = -√3/2
    assert "## Best against best" in text
    assert "Kendall's τ-b = -0.87" in text and "8 finished runs" in text and "1 diverged" in text
    tau = stats.kendalltau([0, 0, 0, 1, 1, 2, 2, 2], [*CORRECT_FRESH, *GROUPED_FRESH, *SHARED_FRESH])
    assert tau.statistic == pytest.approx(-math.sqrt(3) / 2)
    assert f"p = {tau.pvalue:.2g}" in text

    # the table, the wording, the plot
    assert ("| correct_bn | 1 | 0.2 | interior | 0.1: 50.0%, 0.2: 90.0%, 0.4: 55.0% (seeds 100) | "
            "62.00 [57.03, 66.97] | 3 | 0 | – | – | – |") in text
    assert "| shared_bn | all | 0.05 | at the lower bound; 1 fresh seed(s) at another lr left out |" in text
    assert "from 11 tuning runs and 10 fresh runs" in text and "selection bias" in text
    assert (out / "best_vs_best.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "](best_vs_best.png)" in text


def test_the_per_lr_tables_still_show_every_run_and_say_which_are_tuning_runs(best_lr_runs, tmp_path):
    out = tmp_path / "report"
    text = report.build_report([best_lr_runs], out).read_text()
    assert "These runs include 11 tuning runs and 10 fresh seeds of a `sweep.mode=best_lr` sweep" in text
    summary = {(row["variant"], float(row["lr"])): row for row in read_csv(out / "summary.csv")}
    # correct_bn at 0.2: its tuning run and its 3 fresh seeds, pooled here
    assert summary[("correct_bn", 0.2)]["n_tuning_runs"] == "1" and summary[("correct_bn", 0.2)]["n_fresh_runs"] == "3"
    assert float(summary[("correct_bn", 0.2)]["final_test_acc_mean"]) == pytest.approx((0.9 + 0.6 + 0.62 + 0.64) / 4)
    assert "| tuning / fresh |" in (out / "summary.md").read_text()
    roles = {(row["variant"], float(row["lr"]), int(row["seed"])): row["role"] for row in read_csv(out / "runs.csv")}
    assert roles[("correct_bn", 0.2, 100)] == "tune" and roles[("correct_bn", 0.2, 0)] == "final"


def test_without_roles_the_section_says_it_needs_a_best_lr_sweep(tmp_path):
    for seed in (0, 1):
        make_run_dir(tmp_path / "runs" / f"c{seed}", "correct_bn", 0.1, seed)
    out = tmp_path / "report"
    text = report.build_report([tmp_path / "runs"], out).read_text()
    assert "## Best against best" in text and "needs a `sweep.mode=best_lr` sweep" in text
    assert not (out / "best_vs_best.csv").exists() and "tuning / fresh" not in text
    assert read_csv(out / "runs.csv")[0]["role"] == ""
