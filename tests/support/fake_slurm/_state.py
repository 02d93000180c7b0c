"""The state the stand-in SLURM commands share: job id -> state, in $FAKE_SLURM_DIR/jobs.json."""
import json
import os
from pathlib import Path

STATE_DIR = Path(os.environ["FAKE_SLURM_DIR"])


def load() -> dict:
    path = STATE_DIR / "jobs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(jobs: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    temporary = STATE_DIR / "jobs.json.tmp"
    temporary.write_text(json.dumps(jobs))
    temporary.replace(STATE_DIR / "jobs.json")
