"""The training process's OS sandbox (Landlock): what a source past the static guard can reach.

On a Linux kernel with Landlock (this project's CI, and most distributions since 5.13) the
training process can open nothing but its own folders, the system and Python; elsewhere the
measurement says ``sandbox: none`` and the source reaches what its user can.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import generated_text

from autoresearch import data, runner, sandbox
from autoresearch.data import PreparedData
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import RunStatus

SOURCE = Path(__file__).parent / "sources" / "escape"
ABI = sandbox.abi()


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield server.getsockname()[1]


def escape(prepared: PreparedData, tmp: Path, port: int, mp: pytest.MonkeyPatch,
           on: bool) -> tuple[Metrics, dict[str, str], Path]:
    planted = tmp / "planted.json"
    mp.setenv("ESCAPE_READ", str(prepared.path / "val.bin"))
    mp.setenv("ESCAPE_WRITE", str(planted))
    mp.setenv("ESCAPE_PORT", str(port))
    m = runner.measure(runner.Job(source=SOURCE, data=prepared.path,
                                  budget=Budget(kind="tokens", amount=4096), seed=0,
                                  device="cpu", out_dir=tmp / "out", sandbox=on))
    said = {}
    for line in (tmp / "out" / "run.log").read_text().splitlines():
        if line.startswith("escape "):
            what, _, outcome = line.removeprefix("escape ").partition(": ")
            said[what] = outcome
    return m, said, planted


def test_the_sandbox_keeps_training_inside_its_folders(
    prepared_data: PreparedData, tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, said, planted = escape(prepared_data, tmp_path, listener, monkeypatch, on=True)
    assert m.status == RunStatus.ok, m.error  # an honest model: only the escapes fail
    if ABI == 0:
        assert m.sandbox.startswith("none") and said["read"] == "done"
        return
    assert m.sandbox == f"landlock v{ABI}"
    assert said["read"] == "Permission denied"  # the validation split, by its real path
    assert said["shell"] == "Permission denied"  # children inherit the fence
    assert said["write"] == "Permission denied" and not planted.exists()
    if ABI >= 4:
        assert said["connect"] == "Permission denied"
    if ABI >= 6:
        assert said["signal"] == "Operation not permitted"
    assert said["sockets"] == "0"


def test_without_the_sandbox_the_same_source_reaches_everything(
    prepared_data: PreparedData, tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, said, planted = escape(prepared_data, tmp_path, listener, monkeypatch, on=False)
    assert m.status == RunStatus.ok and m.sandbox == "off"
    assert said == {"read": "done", "write": "done", "connect": "done", "shell": "done",
                    "signal": "done", "sockets": "0"}
    assert planted.exists()  # nothing reads it, but it was written


def test_a_dataset_inside_a_readable_folder_is_flagged(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(Path(__file__).parent / "sources" / "tiny", source)
    (tmp_path / "corpus.txt").write_text(generated_text(30_000), encoding="utf-8")
    inside = data.prepare(str(tmp_path / "corpus.txt"), cache=source / "cache")
    m = runner.measure(runner.Job(source=source, data=inside.path,
                                  budget=Budget(kind="tokens", amount=4096), seed=0,
                                  device="cpu", out_dir=tmp_path / "out"))
    assert m.status == RunStatus.ok, m.error
    if ABI:
        assert m.sandbox == (f"landlock v{ABI} (but the dataset is inside {source}, which "
                             "training may read)")
    else:
        assert m.sandbox.startswith("none")
