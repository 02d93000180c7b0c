"""Reading an offline W&B run back, for the tests: what the sink wrote is what W&B will upload.

wandb (0.31) has no Python reader for its `.wandb` transaction log any more (the store moved into wandb-core), so
this decodes the log format itself and parses each record with wandb's own protobuf classes.
"""
from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2


def iter_offline_run_records(wandb_file: str | os.PathLike) -> Iterator[Any]:
    """Decode the protobuf records of a `run-<id>.wandb` transaction log.

    The file is a 7-byte header (":W&B", magic, version) followed by a LevelDB-style log: 32 KiB blocks
    of chunks, each with a 7-byte header (crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST).
    """
    block_size, header_size = 32768, 7
    data = Path(wandb_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{wandb_file} is not a W&B transaction log")
    position, partial = 7, b""
    while position + header_size <= len(data):
        left_in_block = block_size - position % block_size
        if left_in_block < header_size:  # block trailer padding
            position += left_in_block
            continue
        _crc, length, chunk_type = struct.unpack("<IHB", data[position : position + header_size])
        position += header_size
        chunk = data[position : position + length]
        position += length
        if chunk_type == 0:  # zero padding at the end of a block / file
            continue
        if chunk_type == 1:
            payload = chunk
        elif chunk_type == 2:
            partial = chunk
            continue
        elif chunk_type == 3:
            partial += chunk
            continue
        else:
            payload, partial = partial + chunk, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_offline_run(offline_run_dir: str | os.PathLike) -> dict[str, Any]:
    """Config, history rows, final summary and run metadata of an offline run dir, decoded from its .wandb file."""
    (wandb_file,) = Path(offline_run_dir).glob("run-*.wandb")
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    metrics: list[Any] = []
    run_info: dict[str, Any] = {}
    exit_code = None

    def apply_update(target: dict[str, Any], item: Any) -> None:
        path = list(item.nested_key) or [item.key]
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = json.loads(item.value_json)

    for record in iter_offline_run_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            run_info = {"run_id": run.run_id, "project": run.project, "group": run.run_group,
                        "job_type": run.job_type, "name": run.display_name, "tags": list(run.tags)}
            for item in run.config.update:
                apply_update(config, item)
        elif kind == "config":
            for item in record.config.update:
                apply_update(config, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                apply_update(row, item)
            history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                apply_update(summary, item)
        elif kind == "metric":
            metrics.append(record.metric)
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return {"run": run_info, "config": config, "history": history, "summary": summary,
            "metrics": metrics, "exit_code": exit_code}


def read_finished_run(offline_dir: Path, timeout_s: float = 20.0) -> dict[str, Any]:
    """read_offline_run once the exit record is on disk: wandb-core writes the file asynchronously, and
    under load its last records can land a moment after run.finish() has returned."""
    deadline = time.monotonic() + timeout_s
    run = read_offline_run(offline_dir)
    while run["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
        run = read_offline_run(offline_dir)
    return run
