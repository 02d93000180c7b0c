"""Where a run's numbers go. Every sink has the same three calls: log_step, log_epoch, finish.

LocalSink always runs and owns the run directory's files:
  config.yaml     the resolved config
  metrics.jsonl   one JSON object per logged step ("kind": "step") and per epoch ("kind": "epoch")
  summary.json    written atomically: "running" at the start, the final status at the end
Other sinks (W&B) are added beside it, never instead of it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from bnexp.runs.fileio import json_safe, write_json_atomic


class LocalSink:
    def __init__(self, run_dir: str | os.PathLike, resolved_config_yaml: str, initial_summary: dict,
                 extra_files: dict[str, str] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.summary_path = self.run_dir / "summary.json"
        if self.summary_path.exists():
            print(f"[bnexp] {self.run_dir} already holds a run; its config.yaml, metrics.jsonl, summary.json and "
                  "wandb/ are being replaced (give hydra.run.dir a new folder to keep both)", file=sys.stderr)
            # the old run's W&B files would sit beside the new run's outputs, and a logger=wandb rerun adds its own
            shutil.rmtree(self.run_dir / "wandb", ignore_errors=True)
        (self.run_dir / "config.yaml").write_text(resolved_config_yaml)
        for relative_path, text in (extra_files or {}).items():  # the CLI's Hydra copy, .hydra/*.yaml
            (self.run_dir / relative_path).parent.mkdir(parents=True, exist_ok=True)
            (self.run_dir / relative_path).write_text(text)
        # Line-buffered, so a killed run keeps every line logged before the kill. "w": a new run in the same
        # dir (hydra.run.dir=... given twice) replaces the old run's metrics instead of appending to them.
        self._metrics = open(self.run_dir / "metrics.jsonl", "w", buffering=1)
        self.write_summary(initial_summary)

    def log_step(self, record: dict) -> None:
        self._metrics.write(json.dumps(json_safe({"kind": "step", **record})) + "\n")

    def log_epoch(self, record: dict) -> None:
        self._metrics.write(json.dumps(json_safe({"kind": "epoch", **record})) + "\n")

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)

    def finish(self, summary: dict) -> None:
        self._metrics.close()
        self.write_summary(summary)


class SinkGroup:
    """Fans every call out to several sinks; the local one comes first, so it is written even if another fails."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log_step(self, record: dict) -> None:
        for sink in self.sinks:
            sink.log_step(record)

    def log_epoch(self, record: dict) -> None:
        for sink in self.sinks:
            sink.log_epoch(record)

    def finish(self, summary: dict) -> list[Exception]:
        """Finish every sink and return their errors instead of raising them, so that an error already on its way
        (the run's own) stays the one reported. A failure is noted in the summary (`sink_error`, rewritten by the
        local sink) and on stderr."""
        errors = []
        for sink in self.sinks:
            try:
                sink.finish(summary)
            except Exception as error:  # one sink failing must not stop the others from closing
                errors.append(error)
                note = f"{type(sink).__name__}.finish: {type(error).__name__}: {error}"
                summary["sink_error"] = "; ".join(filter(None, [summary.get("sink_error"), note]))
                print(f"[bnexp] {note}", file=sys.stderr)
        if errors:
            try:
                self.sinks[0].write_summary(summary)
            except Exception as error:  # the local sink itself failed: stderr above has it all
                print(f"[bnexp] the summary could not note it: {type(error).__name__}: {error}", file=sys.stderr)
        return errors


def logger_sinks(cfg, run_dir, provenance: dict | None = None) -> list:
    """The extra sink chosen with `logger=`: none (local files only) or wandb (whose run config gets the
    provenance under `bnexp_provenance`).

    wandb is imported only here and only when asked for, so logger=none works without it installed.
    """
    if cfg.logger.name == "none":  # the schema allows none and wandb only; train() checks the config first
        return []
    try:
        from bnexp.train.wandb_sink import WandbSink
    except ImportError as error:
        raise ValueError(f"logger=wandb needs the wandb package ({error}). Install it with "
                         "pip install -e \".[wandb]\", or use logger=none (local files only).") from error
    return [WandbSink(cfg, run_dir, extra_config={"bnexp_provenance": provenance})]
