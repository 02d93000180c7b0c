"""Saving the workspace and report to W&B, bounded in time: credentials checked first, the host probed, and the
whole save given up after a timeout, each failure a DashboardError that points to --dry-run."""
from __future__ import annotations

import socket
import threading
from typing import Any, Callable
from urllib.parse import urlparse

from bnexp.dashboard.spec import DashboardError, DashboardSpec
from bnexp.dashboard.workspace import build_report, build_workspace

DEFAULT_TIMEOUT_S = 120.0
DRY_RUN_HINT = "to build the dashboard without W&B, run with --dry-run --out dashboard.json"


def _within(seconds: float, what: str, work: Callable[[], Any]) -> Any:
    """work() in a daemon thread, or a DashboardError after `seconds`: wandb's own retries can take minutes
    against a host that accepts connections but never answers, and a daemon thread does not hold up the exit."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - reported by the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="bnexp-dashboard-save", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DashboardError(f"W&B did not answer within {seconds:g} s while {what} (raise --timeout on a slow "
                             f"network); {DRY_RUN_HINT}")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, DashboardError):
            raise error
        raise DashboardError(f"{what} failed: {type(error).__name__}: {error}; {DRY_RUN_HINT}") from error
    return outcome["value"]


def _probe(base_url: str, timeout_s: float) -> None:
    """Fail fast, with the host in the message, when nothing listens there (no network, wrong WANDB_BASE_URL)."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as error:
        raise DashboardError(f"cannot reach the W&B server {base_url} ({error}); {DRY_RUN_HINT}") from error


def publish(spec: DashboardSpec, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Save the workspace (and the report, if the spec has one) to W&B; returns their URLs."""
    import wandb

    from bnexp.train.wandb_sink import has_wandb_credentials

    base_url = str(wandb.setup().settings.base_url)
    # Checked before any wandb call: without a key, wandb may prompt for one, which would wait for a user.
    if not has_wandb_credentials(base_url):
        raise DashboardError(f"no W&B credentials (set WANDB_API_KEY or run `wandb login`); {DRY_RUN_HINT}")

    def save() -> list[str]:
        _probe(base_url, min(10.0, timeout_s))
        api = wandb.Api(timeout=max(1, int(timeout_s)))
        entity = spec.entity or api.default_entity
        urls = [build_workspace(spec, entity).save().url]
        if spec.report is not None:
            urls.append(build_report(spec, entity).save().url)
        return urls

    return _within(timeout_s, f"saving to {base_url}", save)
