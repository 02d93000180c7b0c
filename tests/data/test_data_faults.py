"""Data faults: a corrupt image names its file, a subset larger than the source is a config error, a kill during
decode (or during the cache write) is a kill, and temporary cache files do not outlive their writer."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from bnexp.data import cache, decode, folder
from bnexp.runs import fileio
from bnexp.config.compose import ConfigError
from bnexp.data.dataset import CIFAR10_CLASSES, DatasetError
from bnexp.data.folder import load_image_folder
from bnexp.data.sources import load_dataset
from bnexp.train.run import RunInterrupted, StopSignals
from tests.helpers import REPO, repo_env

CLASSES = ("cat", "dog", "ship")


def write_tree(root: Path, per_class: int = 2, image_format: str = "PNG", test_per_class: int | None = None,
               classes: tuple[str, ...] = CLASSES) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class if test_per_class is None else test_per_class)):
        for name in classes:
            folder = root / "tree" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:04d}.{image_format.lower()}", format=image_format)
    return root / "tree"


def decodes(encoded: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.convert("RGB")
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- a corrupt image names its file

def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


CORRUPT_BYTES = st.one_of(
    st.binary(max_size=64),                                                        # not an image at all
    st.integers(0, len(jpeg_bytes()) - 40).map(lambda cut: jpeg_bytes()[:cut]),   # a JPEG cut short
    st.binary(min_size=8, max_size=32).map(lambda noise: jpeg_bytes()[:200] + noise),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corrupt=CORRUPT_BYTES, split=st.sampled_from(["train", "test"]), class_name=st.sampled_from(CLASSES),
       index=st.integers(0, 1), as_archive=st.booleans())
def test_a_corrupt_image_is_named_by_its_path(tmp_path_factory, corrupt, split, class_name, index, as_archive):
    assume(not decodes(corrupt))
    root = tmp_path_factory.mktemp("corrupt")
    tree = write_tree(root, image_format="JPEG")
    bad = tree / split / class_name / f"{index:04d}.jpeg"
    bad.write_bytes(corrupt)
    source = tree
    if as_archive:
        source = root / "tree.tar.gz"
        with tarfile.open(source, "w:gz") as archive:
            archive.add(tree, arcname="tree")
    with pytest.raises(DatasetError) as caught:
        load_image_folder(str(source), str(root / "cache"))
    member = f"tree/{split}/{class_name}/{index:04d}.jpeg" if as_archive else f"{split}/{class_name}/{index:04d}.jpeg"
    assert f"{member}:" in str(caught.value) and "BytesIO" not in str(caught.value)
    assert not list((root / "cache").glob("*.npz")) if (root / "cache").exists() else True


def test_a_corrupt_image_decoded_by_the_worker_pool_is_named_too(tmp_path):
    tree = write_tree(tmp_path, per_class=350, test_per_class=1)  # 1050 train images: decoded in parallel
    (tree / "train" / "dog" / "0300.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after")
    with pytest.raises(DatasetError, match=r"train/dog/0300\.png: "):
        load_image_folder(str(tree), str(tmp_path / "cache"), workers=2)


# ---------------------------------------------------------------- subsets larger than the source

@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.integers(1, 10**12), which=st.sampled_from(["train", "test"]), cached=st.booleans())
def test_a_subset_larger_than_the_folder_is_refused_naming_the_count(tmp_path_factory, monkeypatch, extra, which,
                                                                     cached):
    root = tmp_path_factory.mktemp("sizes")
    tree = write_tree(root, per_class=2)  # 6 train and 6 test images
    if cached:
        load_image_folder(str(tree), str(root / "cache"))

    def no_decoding(*_):
        raise AssertionError("decoded before the sizes were checked")

    data_cfg = {"name": "cifar10_folder", "path": str(tree), "data_dir": str(root / "cache"), "train_size": None,
                "test_size": None}
    with monkeypatch.context() as patched:
        patched.setattr(folder, "_decode_split", no_decoding)
        with pytest.raises(ConfigError, match=rf"data\.{which}_size={6 + extra} is more than the 6 images"):
            load_dataset(OmegaConf.create({**data_cfg, f"{which}_size": 6 + extra}))
    exact = load_dataset(OmegaConf.create({**data_cfg, f"{which}_size": 6}))
    assert len(getattr(exact, which)) == 6


# ---------------------------------------------------------------- a kill during decode is a kill

@pytest.fixture
def trainer_sigterm_handler():
    with StopSignals():  # the handlers a run installs for its whole life, decode included
        yield


def test_sigterm_during_a_serial_decode_raises_the_kill_not_a_dataset_error(tmp_path, monkeypatch,
                                                                            trainer_sigterm_handler):
    from tests.support.slow_decode import slow_decode
    tree = write_tree(tmp_path, per_class=100)  # 300 images at 10 ms each
    monkeypatch.setattr(decode, "decode_image", slow_decode)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(RunInterrupted):
        load_image_folder(str(tree), str(tmp_path / "cache"), workers=1)
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_a_kill_while_the_cache_is_written_leaves_no_temporary_file(tmp_path, monkeypatch, trainer_sigterm_handler):
    tree = write_tree(tmp_path)
    real_savez = np.savez

    def savez_then_killed(file, **arrays):
        file.write(b"PK half of a zip")  # the cache's temporary file, open for writing
        file.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        real_savez(file, **arrays)

    monkeypatch.setattr(cache.np, "savez", savez_then_killed)
    with pytest.raises(RunInterrupted):
        load_image_folder(str(tree), str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.slow
def test_sigterm_during_a_parallel_decode_is_recorded_as_a_kill(tmp_path):
    """The real command line, decoding 2100 images with 2 worker processes (slowed to 10 ms an image, ~10 s in
    all), stopped by SIGTERM a moment into the decode: status failed 'killed', exit code 143, no dataset error,
    and the queued work is dropped rather than decoded first."""
    tree = write_tree(tmp_path, per_class=210, test_per_class=2, classes=CIFAR10_CLASSES)
    run_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    stderr_path = tmp_path / "stderr.log"
    arguments = ["data=cifar10_folder", f"data.path={tree}", f"data.data_dir={cache_dir}", "data.decode_workers=2",
                 "model.width=0.125", "train.epochs=1", "train.batch_size=64", f"hydra.run.dir={run_dir}"]
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tests.support.slow_decode", *arguments], cwd=REPO,
                                   env=repo_env(), stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        deadline = time.monotonic() + 180
        while "decoding train" not in stderr_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, stderr_path.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)
        killed_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        stop_s = time.monotonic() - killed_at
    log = stderr_path.read_text()
    assert process.returncode == 143, log[-3000:]
    assert "Traceback" not in log and "DatasetError" not in log and "download" not in log, log[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("killed"), summary["error"]
    assert summary["steps_done"] == 0 and summary["data_source"] is None
    assert not list(cache_dir.glob("*")) if cache_dir.exists() else True  # no cache, no temporary file
    assert stop_s < 6, f"the run took {stop_s:.1f} s to stop: the queued decode work was not dropped"


# ---------------------------------------------------------------- temporary cache files of dead writers

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fingerprint=st.sampled_from(["current", "earlier"]), writer=st.sampled_from(["dead", "writing", "paused"]),
       cache_kept=st.booleans())
def test_a_temporary_cache_file_is_removed_once_its_writer_is_gone(tmp_path_factory, fingerprint, writer,
                                                                   cache_kept):
    """A writer killed mid-write (SIGKILL) leaves `.<cache>.<random>.tmp`. The next load of the source removes it,
    whether that load reads the cache or writes it, and under any fingerprint of the source. A temporary modified
    since this process started, or quiet for less than STALE_TEMPORARY_S (a write paused in an fsync), may belong
    to a writer still at work, and stays."""
    root = tmp_path_factory.mktemp("stale")
    tree = write_tree(root)
    cache_dir = root / "cache"
    load_image_folder(str(tree), str(cache_dir))
    (cache_file,) = cache_dir.glob("*.npz")
    name = {"current": cache_file.name, "earlier": f"{cache_file.name.rsplit('-', 1)[0]}-0123456789abcdef.npz"}
    leftover = cache_dir / f".{name[fingerprint]}.0123456789ab.tmp"
    leftover.write_bytes(b"half a cache")
    now = time.time()
    stamp = {"dead": now - 2 * 3600, "writing": now + 1, "paused": now - fileio.STALE_TEMPORARY_S / 2}[writer]
    os.utime(leftover, (stamp, stamp))
    if not cache_kept:
        cache_file.unlink()  # the next load decodes and writes the cache again
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fileio, "_PROCESS_STARTED", now)  # as for a run that starts now
        again = load_image_folder(str(tree), str(cache_dir))
    assert len(again.train) == 6
    assert leftover.exists() == (writer != "dead")
    assert cache_file.exists()  # the cache itself is never touched
