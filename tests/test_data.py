"""Datasets: local text, the offline corpus, and the shakespeare download (from 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autoresearch import data, leak, sandbox
from autoresearch.errors import DataError

TEXT = "To be, or not to be, that is the question. " * 1000


def old_layout(cache: Path, name: str, text: bytes, **extra: object) -> data.PreparedData:
    """A dataset folder as versions before the test split wrote it: train 90% / val 10%, its
    sha256 the text's own."""
    sha = hashlib.sha256(text).hexdigest()
    split = int(len(text) * 0.9)
    folder = cache / f"{name}-{sha[:12]}"
    folder.mkdir(parents=True)
    (folder / "train.bin").write_bytes(text[:split])
    (folder / "val.bin").write_bytes(text[split:])
    (folder / "meta.json").write_text(json.dumps({
        "name": name, "sha256": sha, "vocab_size": 256, "bytes_per_token": 1.0,
        "train_tokens": split, "val_tokens": len(text) - split, **extra}))
    return data.load_prepared(folder)


def test_text_file_is_split_80_10_10_into_byte_tokens(tmp_path: Path) -> None:
    src = tmp_path / "hamlet.txt"
    src.write_text(TEXT, encoding="utf-8")
    prepared = data.prepare(str(src), cache=tmp_path / "cache")
    raw = TEXT.encode()
    assert prepared.name == "hamlet" and prepared.text_sha256 == hashlib.sha256(raw).hexdigest()
    # the identity is the layout and the text together: the same text split otherwise differs
    assert prepared.sha256 == data.identity(prepared.text_sha256) != prepared.text_sha256
    assert (prepared.vocab_size, prepared.bytes_per_token) == (256, 1.0)
    assert prepared.train_tokens == int(len(raw) * 0.8) and prepared.has_test
    assert prepared.train_tokens + prepared.val_tokens + prepared.test_tokens == len(raw)
    train = np.fromfile(prepared.path / "train.bin", dtype=np.uint8)
    val = np.fromfile(prepared.path / "val.bin", dtype=np.uint8)
    test = np.fromfile(prepared.path / "test.bin", dtype=np.uint8)
    assert train.tobytes() + val.tobytes() + test.tobytes() == raw
    assert data.load_prepared(prepared.path) == prepared
    assert data.prepare(str(src), cache=tmp_path / "cache") == prepared  # idempotent


def test_folder_of_txt_files_is_read_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text("B" * 15_000, encoding="utf-8")
    (folder / "a.txt").write_text("A" * 15_000, encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    prepared = data.prepare(str(folder), cache=tmp_path / "cache")
    assert prepared.name == "books"
    assert prepared.text_sha256 == hashlib.sha256(
        b"A" * 15_000 + b"\n" + b"B" * 15_000).hexdigest()


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"caf\xe9 " * 10_000, "is not UTF-8"),
    (b"short text", "too small"),
])
def test_bad_text_is_a_data_error_naming_the_problem(
    tmp_path: Path, content: bytes, message: str,
) -> None:
    src = tmp_path / "bad.txt"
    src.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        data.prepare(str(src), cache=tmp_path / "cache")
    if message != "too small":
        assert str(src) in str(err.value)


def test_unknown_dataset_name_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        data.prepare("wikipedia", cache=tmp_path)


def test_offline_corpus_is_sampled_anew_per_cache_and_reused_once_prepared(
        tmp_path: Path) -> None:
    a = data.prepare("offline", cache=tmp_path / "one")
    b = data.prepare("offline", cache=tmp_path / "two")
    assert a.name == b.name == "offline"
    assert a.sha256 != b.sha256  # drawn from the OS's random source: no two installs alike
    assert a.train_tokens + a.val_tokens + a.test_tokens == data.OFFLINE_LIMIT
    text = b"".join((a.path / f).read_bytes() for f in ("train.bin", "val.bin", "test.bin"))
    assert data.identity(hashlib.sha256(text).hexdigest()) == a.sha256
    assert a.path.name == f"offline-{a.sha256[:12]}"
    meta = json.loads((a.path / "meta.json").read_text())
    assert meta["generator"] == data.OFFLINE_GENERATOR and "seed" not in meta
    # preparing again reuses the folder, byte for byte
    assert data.prepare("offline", cache=tmp_path / "one") == a
    assert [p.name for p in (tmp_path / "one").iterdir()] == [a.path.name]


def test_an_older_offline_folder_stays_and_is_found_by_its_sha256(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old_text = data._docstrings()  # what older versions stored as the offline corpus
    old = old_layout(cache, "offline", old_text)
    notices: list[str] = []
    new = data.prepare("offline", cache=cache, notice=notices.append)
    assert new.sha256 != old.sha256 and (old.path / "val.bin").read_bytes() == old_text[
        old.train_tokens:]
    assert "older version" in notices[0] and "rebuilt" in notices[0]
    assert data.prepare("offline", cache=cache) == new  # new runs get the sampled one
    assert data.prepare("offline", cache=cache, sha256=old.sha256) == old  # old runs theirs
    assert data.prepare("offline", cache=cache, sha256="0" * 64) == new


def _python_folders() -> list[Path]:
    """What every training process may read that Python puts there: its prefixes, its import
    path and the standard library (the system folders are left out: too large to scan)."""
    read, _ = sandbox.default_paths(Path("/nonexistent"), Path("/nonexistent"))
    folders = {Path(p) for p in read if p not in sandbox.SYSTEM_READ and Path(p).is_dir()}
    folders.add(Path(sysconfig.get_paths()["stdlib"]))
    return sorted(folders)


TEXT_FILES = {".py", ".pyi", ".txt", ".rst", ".md", ".json", ".html"}  # where text is kept


def _scan(index: leak.LeakIndex, run: int) -> tuple[list[str], int]:
    """Files under the Python folders holding ``run`` bytes in a row of the indexed text, and
    how many bytes were read. Only every (run - window)th window of a file is hashed: any
    ``run`` bytes of the text contain one of them."""
    stride = run - index.window
    powers = np.array([pow(leak._P, index.window - 1 - j, 1 << 64) for j in range(index.window)],
                      dtype=np.uint64)
    found, read, seen = [], 0, set()
    for folder in _python_folders():
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = Path(dirpath, name)
                if path.suffix not in TEXT_FILES:
                    continue
                try:
                    st = path.stat()
                    key = (st.st_dev, st.st_ino)
                    if not path.is_file() or st.st_size > 64 << 20 or key in seen:
                        continue
                    seen.add(key)
                    blob = path.read_bytes()
                except OSError:
                    continue
                read += len(blob)
                if len(blob) < run:
                    continue
                buf = np.frombuffer(blob, dtype=np.uint8)
                starts = np.arange(0, len(blob) - index.window + 1, stride)
                rows = buf[starts[:, None] + np.arange(index.window)].astype(np.uint64) + 1
                with np.errstate(over="ignore"):
                    hashes = (rows * powers).sum(axis=1, dtype=np.uint64)
                where = np.minimum(np.searchsorted(index._hashes, hashes), len(index._hashes) - 1)
                hit = index._hashes[where] == hashes
                for at in starts[hit].tolist():
                    near = blob[max(0, at - run):at + run]
                    if any(h.length >= run for h in index.hits(near)):
                        found.append(str(path))
                        break
    return found, read


@pytest.mark.slow  # reads ~430 MB
def test_the_offline_validation_text_is_in_no_file_python_can_read(tmp_path: Path) -> None:
    prepared = data.prepare("offline", cache=tmp_path)
    index = leak.LeakIndex((prepared.path / "val.bin").read_bytes(), 64)
    found, read = _scan(index, 512)
    assert read > 20_000_000  # the standard library alone is bigger than that
    assert found == []
    # the scan finds what is there: the docstrings older versions used are in the stdlib
    old = leak.LeakIndex(data._docstrings()[-100_000:], 64)
    found, _ = _scan(old, 512)
    assert any(f.endswith(".py") for f in found)


def test_cache_dir_follows_the_environment(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    assert data.cache_dir() == tmp_path
    monkeypatch.delenv("AUTORESEARCH_CACHE")
    assert data.cache_dir() == Path.home() / ".cache" / "autoresearch"


# --- shakespeare, served from a local http.server -------------------------------------------


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Serve tmp_path/www on 127.0.0.1 and point the shakespeare URL at www/input.txt."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(www), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AUTORESEARCH_SHAKESPEARE_URL",
                       f"http://127.0.0.1:{server.server_address[1]}/input.txt")
    yield www
    server.shutdown()
    server.server_close()


def test_shakespeare_download_with_the_right_hash_is_stored(
    serve: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (serve / "input.txt").write_bytes(TEXT.encode())
    # the real file is not in the repo: pretend this text's hash is the published one
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(TEXT.encode()).hexdigest())
    prepared = data.prepare("shakespeare", cache=tmp_path / "cache")
    assert prepared.name == "shakespeare" and prepared.train_tokens == int(len(TEXT) * 0.8)
    (serve / "input.txt").unlink()  # cached now: no second download
    assert data.prepare("shakespeare", cache=tmp_path / "cache") == prepared


def test_a_dataset_from_before_the_test_split_stays_for_its_runs_and_new_runs_get_one(
    serve: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    text = TEXT.encode()
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(text).hexdigest())
    old = old_layout(cache, "shakespeare", text)
    assert not old.has_test and old.text_sha256 == old.sha256
    new = data.prepare("shakespeare", cache=cache)  # nothing served: built from the old text
    assert new.has_test and new.text_sha256 == old.sha256 and new.sha256 != old.sha256
    assert data.prepare("shakespeare", cache=cache, sha256=old.sha256) == old
    # the sampled offline corpus: the same text, split again (it cannot be drawn twice)
    sampled = old_layout(cache, "offline", data._offline_text(40_000),
                         generator=data.OFFLINE_GENERATOR, prepared_at=1.0)
    again = data.prepare("offline", cache=cache)
    assert again.has_test and again.text_sha256 == sampled.sha256
    assert data.prepare("offline", cache=cache) == again


def test_shakespeare_with_a_wrong_hash_is_a_data_error(serve: Path, tmp_path: Path) -> None:
    (serve / "input.txt").write_bytes(TEXT.encode())
    with pytest.raises(DataError, match="corrupt or not tiny-shakespeare"):
        data.prepare("shakespeare", cache=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("shakespeare-*"))


def test_shakespeare_server_down_falls_back_to_offline_with_a_notice(
    serve: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTORESEARCH_SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    notices: list[str] = []
    prepared = data.prepare("shakespeare", cache=tmp_path / "cache", notice=notices.append)
    assert prepared.name == "offline"
    assert len(notices) == 1 and "could not download tiny-shakespeare" in notices[0]
    assert "offline" in notices[0]
