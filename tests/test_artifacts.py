"""capture.artifacts: the atomic write every cache and artifact goes through, hashes and sidecar paths."""
from __future__ import annotations

import hashlib
import json

import pytest

from capture.artifacts import (
    atomic_write,
    build_lock,
    file_sha256,
    read_sidecar,
    sidecar_path,
    write_bytes_atomic,
    write_json_atomic,
)


def _leftovers(folder, name):
    return [p.name for p in folder.iterdir() if p.name != name]


def test_atomic_write_replaces_the_file_in_one_step(tmp_path):
    path = tmp_path / "sub" / "a.bin"  # the folder is made on the way
    write_bytes_atomic(path, b"old")
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # readers see the old file until the block ends
    assert path.read_bytes() == b"new"
    assert _leftovers(path.parent, "a.bin") == []


def test_a_failing_write_leaves_the_old_file_intact_and_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"half of the ne")
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path, "a.bin") == []


def test_a_writer_that_wrote_nothing_is_an_error_and_changes_nothing(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_write(path):
            pass
    assert path.read_bytes() == b"old"


def test_json_that_cannot_be_serialised_never_truncates_the_old_sidecar(tmp_path):
    path = tmp_path / "E_flame.onnx.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} == read_sidecar(path)
    assert _leftovers(tmp_path, path.name) == []


def test_suffix_is_kept_for_writers_that_read_the_extension(tmp_path):
    with atomic_write(tmp_path / "clip.mp4", suffix=".mp4") as tmp:
        assert tmp.name.endswith(".mp4")
        tmp.write_bytes(b"x")


def test_file_hash_and_sidecar_name(tmp_path):
    path = tmp_path / "E_flame.onnx"
    path.write_bytes(b"graph bytes" * 1000)
    assert file_sha256(path, chunk=7) == hashlib.sha256(b"graph bytes" * 1000).hexdigest()
    assert sidecar_path(path) == tmp_path / "E_flame.onnx.json"
    assert sidecar_path(tmp_path / "E_flame.engine").name == "E_flame.engine.json"


def test_build_lock_makes_concurrent_first_uses_build_once(tmp_path):
    """Four workers need the same artifact at once: one builds it, the others wait and then find it."""
    import threading
    import time

    target = tmp_path / "cache" / "graph.onnx"
    builds = []
    start = threading.Barrier(4)

    def need_it():
        start.wait()
        if not target.is_file():
            with build_lock(target):
                if not target.is_file():
                    builds.append(threading.get_ident())
                    time.sleep(0.2)  # a slow build: the others arrive while it runs
                    write_bytes_atomic(target, b"graph")

    workers = [threading.Thread(target=need_it) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(builds) == 1 and target.read_bytes() == b"graph"
    with build_lock(target):  # released: taking it again does not wait
        pass
