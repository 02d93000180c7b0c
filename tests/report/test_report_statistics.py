"""The report's statistics beyond one interval: Kendall's τ-b of accuracy against group size (against a brute-force
count of pairs and the textbook p-value), Holm's correction (against a worked example and the step-down
definition), and where the report shows them (trend.csv, the Differences section, the mechanism and lr tables)."""
from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnexp.report import build as report
from bnexp.report.intervals import difference_interval, holm_adjusted, t_interval
from bnexp.report.trend import kendall_tau_b
from tests.helpers import make_run_dir


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


# --- Kendall's τ-b from its definition ---------------------------------------------------------------------------

def sign(value: float) -> int:
    return (value > 0) - (value < 0)


def pair_counts(x: list[float], y: list[float]) -> tuple[int, int, int, int]:
    """Concordant pairs, discordant pairs, pairs tied in x, pairs tied in y (a pair tied in both counts in both)."""
    concordant = discordant = tied_x = tied_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        product = sign(x[i] - x[j]) * sign(y[i] - y[j])
        concordant += product > 0
        discordant += product < 0
        tied_x += x[i] == x[j]
        tied_y += y[i] == y[j]
    return concordant, discordant, tied_x, tied_y


def brute_force_tau_b(x: list[float], y: list[float]) -> float:
    concordant, discordant, tied_x, tied_y = pair_counts(x, y)
    pairs = len(x) * (len(x) - 1) // 2
    return (concordant - discordant) / math.sqrt((pairs - tied_x) * (pairs - tied_y))


def normal_approximation_p(x: list[float], y: list[float]) -> float:
    """Two-sided p of S = concordant - discordant under independence, S normal with Kendall's variance corrected
    for ties (Kendall & Gibbons, Rank Correlation Methods, eq. 4.4)."""
    n = len(x)
    concordant, discordant, _, _ = pair_counts(x, y)
    ties_x = [x.count(value) for value in set(x)]
    ties_y = [y.count(value) for value in set(y)]
    variance = (n * (n - 1) * (2 * n + 5) - sum(t * (t - 1) * (2 * t + 5) for t in ties_x)
                - sum(u * (u - 1) * (2 * u + 5) for u in ties_y)) / 18
    variance += (sum(t * (t - 1) * (t - 2) for t in ties_x) * sum(u * (u - 1) * (u - 2) for u in ties_y)
                 / (9 * n * (n - 1) * (n - 2)))
    variance += sum(t * (t - 1) for t in ties_x) * sum(u * (u - 1) for u in ties_y) / (2 * n * (n - 1))
    return math.erfc(abs(concordant - discordant) / math.sqrt(variance) / math.sqrt(2))


def exact_permutation_p(x: list[float], y: list[float]) -> float:
    """Two-sided p without ties: the share of all orderings of y whose |S| is at least the observed |S|."""
    observed = abs(pair_counts(x, y)[0] - pair_counts(x, y)[1])
    extreme = 0
    for permuted in itertools.permutations(y):
        concordant, discordant, _, _ = pair_counts(x, list(permuted))
        extreme += abs(concordant - discordant) >= observed
    return extreme / math.factorial(len(y))


# group sizes as positions 0..3, three seeds each at most, accuracies on a coarse grid (so that ties occur)
tied_samples = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 8)), min_size=4, max_size=12)


@settings(max_examples=60, deadline=None)
@given(points=tied_samples)
def test_kendall_tau_b_with_ties_matches_the_pair_count_and_the_normal_approximation(points):
    x, y = [float(p[0]) for p in points], [p[1] / 8 for p in points]
    tau, p_value = kendall_tau_b(x, y)
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert (tau, p_value) == (None, None)  # nothing varies: no test
        return
    assert tau == pytest.approx(brute_force_tau_b(x, y), abs=1e-12)
    if len(set(x)) < len(x) or len(set(y)) < len(y):  # ties: scipy's normal approximation
        assert p_value == pytest.approx(normal_approximation_p(x, y), rel=1e-9)


@pytest.mark.parametrize("y", [[0.1, 0.4, 0.2, 0.7, 0.5, 0.9], [0.9, 0.8, 0.6, 0.7, 0.2, 0.1],
                               [0.3, 0.1, 0.6, 0.2, 0.5]])
def test_kendall_tau_b_without_ties_is_exact(y):
    x = list(range(len(y)))
    tau, p_value = kendall_tau_b(x, y)
    assert tau == pytest.approx(brute_force_tau_b(x, y), abs=1e-12)
    assert p_value == pytest.approx(exact_permutation_p(x, y), rel=1e-9)


# --- Holm's correction -------------------------------------------------------------------------------------------

def test_holm_on_a_worked_example():
    # sorted: 0.005·4 = 0.02; 0.01·3 = 0.03; 0.03·2 = 0.06; 0.04·1 = 0.04, raised to the 0.06 before it
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjusted([0.2]) == pytest.approx([0.2]) and holm_adjusted([]) == []


def holm_rejects(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's procedure as defined: walk the p-values up from the smallest, reject H_(j) while
    p_(j) <= alpha / (m - j + 1), and stop at the first that is not."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


@settings(max_examples=200, deadline=None)
@given(p_values=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12), alpha=st.sampled_from([0.01, 0.05, 0.1]))
def test_holm_adjusted_p_values_reject_what_the_step_down_procedure_rejects(p_values, alpha):
    adjusted = holm_adjusted(p_values)
    # exact boundary cases (an adjusted p equal to alpha in floating point) are the procedure's own business
    if any(math.isclose(value, alpha, rel_tol=1e-12) for value in adjusted):
        return
    assert [value <= alpha for value in adjusted] == holm_rejects(p_values, alpha)
    assert all(raw <= value <= 1.0 for raw, value in zip(p_values, adjusted))


# --- in the report -----------------------------------------------------------------------------------------------

# final accuracy per group size at lr 0.1 (falling with the group size) and 0.4 (no order); 3 seeds each
ACCURACIES = {
    ("correct_bn", 0.1): (0.80, 0.82, 0.81), ("grouped_bn_2ch", 0.1): (0.78, 0.79, 0.80),
    ("grouped_bn_4ch", 0.1): (0.70, 0.72, 0.69), ("shared_bn", 0.1): (0.50, 0.55, None),
    ("correct_bn", 0.4): (0.60, 0.40, 0.50), ("grouped_bn_2ch", 0.4): (0.45, 0.62, 0.51),
    ("grouped_bn_4ch", 0.4): (0.55, 0.48, 0.58), ("shared_bn", 0.4): (0.52, 0.47, 0.61),
}
BY_SIZE = {"grouped_bn_2ch": 2, "grouped_bn_4ch": 4}


@pytest.fixture
def trend_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for (variant, lr), accuracies in ACCURACIES.items():
        for seed, accuracy in enumerate(accuracies):
            extra = ({"variant": {"name": variant, "norm": "grouped", "stat_groups": None,
                                  "channels_per_group": BY_SIZE[variant]}} if variant in BY_SIZE else None)
            make_run_dir(root / f"{variant}_{lr}_{seed}", "grouped_bn" if variant in BY_SIZE else variant, lr, seed,
                         status="finished" if accuracy is not None else "diverged",
                         final_test_acc=accuracy if accuracy is not None else 0.99,  # a diverged run's leftover
                         extra_config=extra, instrumented=False)
    for lr in (0.1, 0.4):  # no normalisation and a fixed group count have no place in the order
        make_run_dir(root / f"no_bn_{lr}", "no_bn", lr, 0, final_test_acc=0.3, instrumented=False)
        make_run_dir(root / f"g8_{lr}", "grouped_bn", lr, 0, stat_groups=8, final_test_acc=0.9, instrumented=False)
    return root


def test_trend_with_group_size_per_lr_in_csv_and_report(trend_runs: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert report.main([str(trend_runs), "--out", str(out)]) == 0
    rows = {float(row["lr"]): row for row in read_csv(out / "trend.csv")}
    position = {"correct_bn": 0, "grouped_bn_2ch": 1, "grouped_bn_4ch": 2, "shared_bn": 3}  # 1 < 2 < 4 < all
    p_values = {}
    for lr, row in rows.items():
        points = [(position[variant], accuracy) for (variant, at), accuracies in ACCURACIES.items() if at == lr
                  for accuracy in accuracies if accuracy is not None]
        x, y = [float(p[0]) for p in points], [p[1] for p in points]
        assert row["group_sizes"] == "1 2 4 all" and int(row["n_runs"]) == len(points)
        assert int(row["n_diverged_left_out"]) == (1 if lr == 0.1 else 0)
        assert row["variants_left_out"] == "grouped_bn_g8 no_bn"
        assert float(row["kendall_tau_b"]) == pytest.approx(brute_force_tau_b(x, y), abs=1e-12)
        p_values[lr] = normal_approximation_p(x, y)
        assert float(row["p_value"]) == pytest.approx(p_values[lr], rel=1e-9)
    assert float(rows[0.1]["kendall_tau_b"]) < -0.8 and float(rows[0.1]["p_value"]) < 0.001
    holm = holm_adjusted([p_values[0.1], p_values[0.4]])
    assert [float(rows[lr]["p_holm"]) for lr in (0.1, 0.4)] == pytest.approx(holm, rel=1e-9)
    text = section((out / "report.md").read_text(), "Trend with group size")
    assert "per-channel (1) < 2 < 4 < … < all" in text and "Left out: no normalisation" in text
    assert f"| 0.1 | 1 < 2 < 4 < all | 11 | {float(rows[0.1]['kendall_tau_b']):+.2f} |" in text


def test_differences_give_p_and_holm_over_every_comparison(trend_runs: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert report.main([str(trend_runs), "--out", str(out)]) == 0
    rows = read_csv(out / "differences.csv")
    tested = [row for row in rows if row["p_value"] != ""]
    assert len(rows) == 10 and len(tested) == 6  # 3 variants of 3 seeds against correct_bn at 2 lrs; one seed: no p
    holm = holm_adjusted([float(row["p_value"]) for row in tested])
    for row, adjusted in zip(tested, holm):
        accuracies = {variant: [a for a in ACCURACIES[(variant, float(row["lr"]))] if a is not None]
                      for variant in (row["variant"], "correct_bn")}
        welch = difference_interval(accuracies[row["variant"]], accuracies["correct_bn"])
        assert float(row["p_value"]) == pytest.approx(welch.p_value, rel=1e-12)
        assert float(row["p_holm"]) == pytest.approx(adjusted, rel=1e-12)
        assert (row["holds_after_holm"] == "True") == (adjusted <= 0.05)
        assert (row["resolved"] == "True") == (float(row["p_value"]) < 0.05)  # the interval and p agree
    text = section((out / "report.md").read_text(), "Differences")
    n_hold = sum(adjusted <= 0.05 for adjusted in holm)
    assert "Holm's step-down correction over all 6 comparisons below with a p-value (every lr" in text
    assert f"{n_hold} of 6 hold after it" in text
    shared = next(row for row in tested if row["variant"] == "shared_bn" and row["lr"] == "0.1")
    # 2 seeds left against 3: resolved alone (p < 0.05), not once the 6 comparisons are accounted for
    assert float(shared["p_value"]) < 0.05 < float(shared["p_holm"])
    assert (f"→ holds: shared_bn < correct_bn; p = {float(shared['p_value']):.2g}, "
            f"Holm p = {float(shared['p_holm']):.2g} (not resolved after Holm)") in text
    grouped = next(row for row in tested if row["variant"] == "grouped_bn_4ch" and row["lr"] == "0.1")
    assert float(grouped["p_holm"]) < 0.05 and "(holds after Holm)" in text


def test_stable_and_largest_trainable_lr_tables_say_how_many_seeds_each_lr_had(trend_runs: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert report.main([str(trend_runs), "--out", str(out)]) == 0
    stable = {row["variant"]: row["seeds_per_lr"] for row in read_csv(out / "stable_lr.csv")}
    assert stable["correct_bn"] == "3" and stable["no_bn"] == "1"
    searched = {row["variant"]: row["seeds_per_lr"] for row in read_csv(out / "largest_trainable_lr.csv")}
    assert searched["shared_bn"] == "3" and searched["grouped_bn_g8"] == "1"
    text = (out / "report.md").read_text()
    assert "| largest lr that trains (acc ≥ 20%) | seeds per lr |" in text
    assert "| lrs tried | seeds per lr |" in text and "| 0.1, 0.4 | 3 |" in text


def add_mechanism_keys(run_dir: Path, keys: dict) -> None:
    """The probe's mechanism keys in the run's last step record."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    [record for record in lines if record["kind"] == "step"][-1].update(keys)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in lines))


def test_mechanism_table_gives_each_mean_its_interval(tmp_path: Path):
    runs = tmp_path / "runs"
    dead = ([0.0, 0.1, 0.2], [0.0, 0.3, 0.3], [0.1, 0.1, 0.4])
    for seed, (status, accuracy) in enumerate([("finished", 0.50), ("finished", 0.60), ("diverged", 0.95)]):
        run_dir = make_run_dir(runs / f"run_{seed}", "correct_bn", 0.4, seed, status=status, final_test_acc=accuracy)
        add_mechanism_keys(run_dir, {**{f"act/act{i}/dead_frac": value for i, value in enumerate(dead[seed])},
                                     "bn/norm0/xhat_std_ratio": 1.0, "bn/norm0/out_std_ratio": 2.0 + seed,
                                     "bn/norm1/out_std_ratio": 3.0,
                                     "act/head/in_zero_frac": 0.0})
    text = report.build_report([runs], tmp_path / "out", shared_lr=0.4).read_text()
    (row,) = read_csv(tmp_path / "out" / "mechanism.csv")
    dead_means = [sum(values) / 3 for values in dead]
    expected = t_interval(dead_means)
    assert (float(row["dead_mean_ci_low"]), float(row["dead_mean_ci_high"])) == pytest.approx(
        (expected.low, expected.high), rel=1e-12)
    accuracy = t_interval([0.50, 0.60])  # the finished runs only
    assert int(row["final_test_acc_n"]) == 2
    assert (float(row["final_test_acc_ci_low"]), float(row["final_test_acc_ci_high"])) == pytest.approx(
        (accuracy.low, accuracy.high), rel=1e-12)
    assert row["zero_input_max_ci_low"] == "0.0" == row["zero_input_max_ci_high"]
    assert "95% Student-t interval over the same runs" in text
    assert (f"| correct_bn | 0.4 | 3 | [{expected.low:.2f}, {expected.high:.2f}] |" in text
            and f"| [{100 * accuracy.low:.1f}, {100 * accuracy.high:.1f}]% (n=2) |" in text)


def test_the_trend_leaves_out_variants_that_change_more_than_the_group_size(tmp_path: Path):
    """One gamma/beta per group (shared_bn as its config says it), a pooled mean or variance alone and a frozen
    gamma are not group sizes: only per-channel statistics and one statistic with per-channel gamma/beta remain."""
    root = tmp_path / "runs"
    others = {"shared_bn": {"variant": {"name": "shared_bn", "norm": "shared", "stat_groups": 1,
                                        "affine_per_channel": False}},
              "pooled_var_bn": {"variant": {"name": "pooled_var_bn", "norm": "grouped", "stat_groups": 1,
                                            "pooled": "var"}},
              "frozen_gamma_bn": {"variant": {"name": "frozen_gamma_bn", "norm": "per_channel",
                                              "freeze_weight": True}}}
    for seed in range(3):
        make_run_dir(root / f"correct_{seed}", "correct_bn", 0.1, seed, final_test_acc=0.8 + 0.01 * seed,
                     instrumented=False)
        make_run_dir(root / f"one_{seed}", "grouped_bn", 0.1, seed, stat_groups=1, final_test_acc=0.5 + 0.01 * seed,
                     instrumented=False)
        for name, config in others.items():
            make_run_dir(root / f"{name}_{seed}", name, 0.1, seed, final_test_acc=0.9, extra_config=config,
                         instrumented=False)
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    (row,) = read_csv(out / "trend.csv")
    assert row["group_sizes"] == "1 all" and int(row["n_runs"]) == 6
    assert float(row["kendall_tau_b"]) < 0  # the 0.9s of the left-out variants would have turned it
    assert set(row["variants_left_out"].split()) == {"shared_bn", "pooled_var_bn_g1", "frozen_gamma_bn"}
