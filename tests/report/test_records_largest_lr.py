"""The largest trainable lr the report reads off a variant's runs: 'up to the cap' only when the variant trained at
the largest lr tried; a run still going at a larger lr leaves the bracket open."""
from pathlib import Path

from bnexp.report import records
from tests.helpers import make_run_dir


def largest_trainable_lr_of(root: Path) -> records.LargestTrainableLr:
    (found,) = records.largest_trainable_lrs(records.load_runs([root])[0])
    return found


def test_training_at_every_lr_tried_is_capped_at_the_largest(tmp_path: Path):
    for lr in (0.1, 0.4, 1.6):
        make_run_dir(tmp_path / f"c_{lr}", "correct_bn", lr, 0, final_test_acc=0.7)
    found = largest_trainable_lr_of(tmp_path)
    assert found.bracket.capped and found.largest_trainable_lr == 1.6
    assert found.bracket.describe().startswith(
        "largest trainable lr >= 1.6 (trains at every lr tried, up to the cap 1.6)")


def test_a_run_still_going_at_the_largest_lr_leaves_the_bracket_open(tmp_path: Path):
    for lr in (0.1, 0.4):
        make_run_dir(tmp_path / f"c_{lr}", "correct_bn", lr, 0, final_test_acc=0.7)
    make_run_dir(tmp_path / "c_1.6", "correct_bn", 1.6, 0, status="running", final_test_acc=None)
    found = largest_trainable_lr_of(tmp_path)
    assert found.lrs_tried == [0.1, 0.4, 1.6]
    assert not found.bracket.capped and not found.bracket.done and found.largest_trainable_lr == 0.4
    assert "up to the cap" not in found.bracket.describe()
