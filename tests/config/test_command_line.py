"""`python -m bnexp.train` as a user meets it: --help speaks bnexp, and a bad value on the command line is refused
by the early check, before torch is imported and before any run dir exists (real processes)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY_RUN, repo_env

CONF_DIR = REPO / "conf"


def test_help_speaks_bnexp_and_lists_only_the_users_groups():
    result = subprocess.run([sys.executable, "-m", "bnexp.train", "--help"], cwd=REPO, env=repo_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "powered by Hydra" not in text and "bnexp_schema" not in text
    assert text.startswith("python -m bnexp.train [+variant=<name>]") and "CIFAR-10" in text
    for variant in sorted(CONF_DIR.glob("variant/*.yaml")):  # each variant, with its line from the yaml
        description = next(line for line in variant.read_text().splitlines() if line.startswith("#"))
        assert re.search(rf"^  {variant.stem} +{re.escape(description.lstrip('# '))}$", text, re.MULTILINE), \
            variant.stem
    groups = {match[1] for match in re.finditer(r"^  \+?([a-z_/]+)= ", text, re.MULTILINE)}
    assert groups == {"data", "instrument", "logger", "model", "optim", "preset", "variant", "hydra/launcher"}
    assert re.search(r"^  model= +airbench \(default\), resnet18, vgg$", text, re.MULTILINE)
    assert re.search(r"^  \+variant= +correct_bn, ", text, re.MULTILINE)
    assert len(re.findall(r"^  python -m bnexp\.train ", text, re.MULTILINE)) == 3


# Each refused by the early check. Without it, the first three trained and exited 0 (a key added with + was
# recorded and ignored, lr=0 ran, the epoch count was taken), and variant.name wrote its run outside runs/.
EARLY_REFUSALS = {
    "key added with a plus": (["+train.epoch=3"], r"train\.epoch is not a config key; did you mean train\.epochs\?"),
    "lr zero": (["optim.lr=0"], r"optim\.lr=0\.0 is too small \(must be above 0\)"),
    "huge epochs": (["train.epochs=99999999999999999999"],
                    r"train\.epochs=99999999999999999999 is too large \(at most 1000000\)"),
    "name with a path": (["variant.name=../../../x"],
                         r"variant\.name='\.\./\.\./\.\./x' names a folder of the run dir"),
    "seed": (["seed=99999999999"], r"seed=99999999999 is too large \(at most 4294967295\)"),
}


@pytest.mark.slow
def test_a_bad_value_exits_2_before_torch_is_imported_and_leaves_no_run_dir(tmp_path):
    """Real processes, all started at once, each in a folder of its own with the default run dir (runs/ under the
    working dir, so that a run placed by a name outside runs/ still lands inside tmp_path). `-X importtime` lists
    every module the process imported: torch must not be among them."""
    processes = {}
    for name, (arguments, _) in EARLY_REFUSALS.items():
        working_dir = tmp_path / name.replace(" ", "_") / "a" / "b" / "c"
        working_dir.mkdir(parents=True)
        processes[name] = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "bnexp.train", *TINY_RUN, *arguments],
            cwd=working_dir, env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        message = EARLY_REFUSALS[name][1]
        imported = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
        said = [line for line in stderr.splitlines() if not line.startswith("import time:")]
        assert process.returncode == 2, (name, said[-20:])
        assert len(said) == 1 and re.match(rf"bnexp\.train: error: {message}", said[0]), (name, said)
        assert "torch" not in imported and "bnexp.models" not in imported, name
        case_root = tmp_path / name.replace(" ", "_")
        assert [path for path in case_root.rglob("*") if path.name not in ("a", "b", "c")] == [], name
