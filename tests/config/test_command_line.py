"""`python -m bnexp.train` as a user meets it (real processes): --help speaks bnexp."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import REPO, repo_env

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
