"""`autoresearch doctor` in every state this machine can really be put in: no CUDA, the real
Landlock, git missing from PATH, an unwritable workspace, keys set and unset, a base URL that
answers and one that does not, a Ray address with and without a server behind it."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from autoresearch import sandbox
from autoresearch.cli import app

SECRET = "sk-test-0123456789-never-printed"


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key, base URL, Ray address or autoresearch setting from the machine running the
    tests; the dataset cache is the test's own (empty)."""
    for name in list(os.environ):
        if name.startswith("AUTORESEARCH_") or name in (
                "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
                "RAY_ADDRESS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    result = CliRunner().invoke(app, ["init", str(ws)])
    assert result.exit_code == 0, result.output
    return ws


def doctor(workspace: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--workspace", str(workspace), "doctor", *args])


def lines(result: Result) -> dict[str, str]:
    """check name -> its line, from doctor's table (state first, then the name)."""
    out = {}
    for line in result.stdout.splitlines()[:-1]:
        words = line.split()
        name = " ".join(words[1:3]) if words[1:3] in (["api", "keys"], ["base", "url"],
                                                       ["ray", "cluster"]) else words[1]
        out[name] = line
    return out


def test_doctor_on_this_machine(workspace: Path) -> None:
    """The full check, compile included, on this CPU-only machine: ready for a CPU loop, with
    the sandbox as the kernel really has it, and --json carries the same checks."""
    result = doctor(workspace)
    assert result.exit_code == 0, result.output
    found = lines(result)
    assert found["python"].startswith("ok") and sys.version.split()[0] in found["python"]
    assert found["torch"].startswith("ok")
    assert found["cuda"].startswith("warning") and "no CUDA device" in found["cuda"]
    assert found["compile"].startswith("ok") and "torch.compile works on cpu" in found["compile"]
    abi = sandbox.abi()
    if abi:
        assert found["sandbox"].startswith(f"ok       sandbox     Landlock ABI v{abi}:")
        assert "could not read outside its folders" in found["sandbox"]
    else:
        assert found["sandbox"].startswith("warning") and "no Landlock" in found["sandbox"]
    assert found["git"].startswith("ok") and "git version" in found["git"]
    assert found["workspace"].startswith("ok") and "baseline/train.py present" in (
        found["workspace"])
    assert found["disk"].startswith("ok") and "writable" in found["disk"]
    assert found["dataset"].startswith("warning") and "not prepared yet" in found["dataset"]
    assert result.stdout.splitlines()[-1].startswith("ready: `autoresearch loop` can run on cpu")

    as_json = doctor(workspace, "--json", "--quick")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["device"] == "cpu" and report["ready"] is True
    assert [c["name"] for c in report["checks"]] == list(found)
    by_name = {c["name"]: c for c in report["checks"]}
    for name, line in found.items():
        if name != "compile":  # --quick: not checked
            assert line.split()[0] == by_name[name]["state"], name
    assert by_name["compile"]["state"] == "warning" and "--quick" in by_name["compile"]["detail"]


def test_doctor_for_cuda_on_a_machine_without_it_is_not_ready(workspace: Path) -> None:
    result = doctor(workspace, "--device", "cuda", "--quick")
    assert result.exit_code == 1, result.output
    assert lines(result)["cuda"].startswith("missing  cuda        no CUDA device")
    assert result.stdout.splitlines()[-1] == (
        "not ready: `autoresearch loop` on cuda needs cuda (see above)")
    report = json.loads(doctor(workspace, "--device", "cuda", "--quick", "--json").stdout)
    assert report["ready"] is False
    assert [c["name"] for c in report["checks"] if c["blocking"]] == ["cuda"]


def test_doctor_says_git_is_missing_from_path(workspace: Path, tmp_path: Path) -> None:
    """A real process with a PATH that has no git: one line saying so, exit 1, no traceback
    (GitPython alone would refuse to import)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    env.pop("GIT_PYTHON_REFRESH", None)
    done = subprocess.run([sys.executable, "-m", "autoresearch", "--workspace", str(workspace),
                           "doctor", "--quick"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    git = next(line for line in done.stdout.splitlines() if line.split()[1] == "git")
    assert git.startswith("missing  git         git is not on PATH — install git")
    assert done.stdout.splitlines()[-1] == (
        "not ready: `autoresearch loop` on cpu needs git (see above)")


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only folder, or, for root (whom
    permissions do not stop), a sysfs folder."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_doctor_says_the_workspace_cannot_be_written(tmp_path: Path) -> None:
    folder = _unwritable(tmp_path)
    result = doctor(folder, "--quick")
    assert result.exit_code == 1, result.output
    found = lines(result)
    assert found["disk"].startswith(f"missing  disk        cannot write in {folder}")
    assert found["workspace"].startswith("warning") and "autoresearch init" in (
        found["workspace"])
    assert "needs disk" in result.stdout.splitlines()[-1]


def test_doctor_shows_which_keys_are_set_never_their_values(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = doctor(workspace, "--quick")
    assert lines(result)["api keys"].startswith(
        "warning  api keys    ANTHROPIC_API_KEY not set; OPENAI_API_KEY not set: --agent auto "
        "uses the offline playbook agent")
    result = doctor(workspace, "--quick", "--agent", "playbook")
    assert result.exit_code == 0 and lines(result)["api keys"].endswith(
        "OPENAI_API_KEY not set: none needed for --agent playbook")
    # an agent that needs a key it does not have: the loop cannot run
    result = doctor(workspace, "--quick", "--agent", "openai")
    assert result.exit_code == 1 and lines(result)["api keys"].startswith("missing")

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for args in (["--quick"], ["--quick", "--json"], ["--quick", "--agent", "openai"]):
        result = doctor(workspace, *args)
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output and SECRET[-12:] not in result.output
    assert lines(doctor(workspace, "--quick"))["api keys"] == (
        "ok       api keys    OPENAI_API_KEY set; ANTHROPIC_API_KEY not set: --agent auto "
        "uses openai")


class _Models(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        body = b'{"data": [{"id": "local-model"}]}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _NeedsKey(_Models):
    status = 401


@pytest.fixture(params=[_Models, _NeedsKey], ids=["open", "needs-key"])
def llm_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), request.param)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_doctor_finds_a_base_url_that_answers(
        workspace: Path, llm_server: tuple[str, ThreadingHTTPServer]) -> None:
    url, server = llm_server
    result = doctor(workspace, "--quick", "--base-url", url)
    assert result.exit_code == 0, result.output
    status = server.RequestHandlerClass.status  # type: ignore[attr-defined]
    line = lines(result)["base url"]
    assert line.startswith(f"ok       base url    {url} answers (HTTP {status} from /models")
    assert ("wants a key" in line) == (status == 401)
    assert server.paths == ["/v1/models"]  # type: ignore[attr-defined]


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_doctor_finds_a_base_url_that_does_not_answer(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)  # the SDK's own variable counts too
    result = doctor(workspace, "--quick")
    assert result.exit_code == 1, result.output
    assert lines(result)["base url"].startswith(f"missing  base url    {url} does not answer:")
    assert "needs base url" in result.stdout.splitlines()[-1]
    result = doctor(workspace, "--quick", "--base-url", "localhost:8000")
    assert result.exit_code == 1 and "is not an http(s) URL" in lines(result)["base url"]


class _Grpc(socketserver.BaseRequestHandler):
    """Answers the HTTP/2 preface with an empty SETTINGS frame, as a gRPC server (Ray's GCS)
    does."""

    reply = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

    def handle(self) -> None:
        self.request.recv(24)
        self.request.sendall(self.reply)


class _NotGrpc(_Grpc):
    reply = b"HTTP/1.1 400 Bad Request\r\n\r\n"


@pytest.fixture
def tcp_server(request: pytest.FixtureRequest) -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("tcp_server", [_Grpc], indirect=True)
def test_doctor_finds_a_ray_address_that_answers(workspace: Path, tcp_server: int) -> None:
    address = f"127.0.0.1:{tcp_server}"
    result = doctor(workspace, "--quick", "--backend", "ray", "--ray-address", address)
    assert result.exit_code == 0, result.output
    found = lines(result)
    assert found["ray"].startswith("ok       ray         ray ")
    assert found["ray cluster"] == (
        f"ok       ray cluster a gRPC server (Ray's GCS) answers at {address}")


@pytest.mark.parametrize("tcp_server", [_NotGrpc], indirect=True)
def test_doctor_finds_a_ray_address_that_is_not_ray(workspace: Path, tcp_server: int) -> None:
    address = f"127.0.0.1:{tcp_server}"
    result = doctor(workspace, "--quick", "--backend", "ray", "--ray-address", address)
    assert result.exit_code == 1, result.output
    assert "does not speak Ray's protocol" in lines(result)["ray cluster"]
    assert "needs ray cluster" in result.stdout.splitlines()[-1]


def test_doctor_finds_a_ray_address_where_nothing_listens(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    # for the local backend a dead address is a warning; for --backend ray the loop needs it
    monkeypatch.setenv("RAY_ADDRESS", address)
    result = doctor(workspace, "--quick")
    assert result.exit_code == 0, result.output
    assert lines(result)["ray cluster"].startswith(
        f"warning  ray cluster nothing answers at {address}")
    result = doctor(workspace, "--quick", "--backend", "ray")
    assert result.exit_code == 1
    assert lines(result)["ray cluster"].startswith("missing")


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--backend", "slurm"], "bad setting backend"),
])
def test_doctor_bad_input_is_one_line_and_exit_2(workspace: Path, args: list[str],
                                                 message: str) -> None:
    result = doctor(workspace, "--quick", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def _fake_torch(*gpus: tuple[str, int, tuple[int, int]]) -> object:
    """A stand-in for torch on a CUDA machine (name, bytes, capability per GPU): this machine
    has no GPU, and the CUDA lines of doctor should have run at least once before a user's."""
    from types import SimpleNamespace

    props = [SimpleNamespace(name=n, total_memory=b, major=c[0], minor=c[1]) for n, b, c in gpus]
    cuda = SimpleNamespace(is_available=lambda: bool(gpus), device_count=lambda: len(gpus),
                           get_device_properties=lambda i: props[i],
                           get_device_capability=lambda i: (props[i].major, props[i].minor))
    return SimpleNamespace(cuda=cuda, version=SimpleNamespace(cuda="12.8"),
                           backends=SimpleNamespace(mps=None))


def test_doctor_lines_for_cuda_devices() -> None:
    from autoresearch import doctor as doctor_mod

    torch = _fake_torch(("NVIDIA H100 80GB HBM3", 80 * 1024**3, (9, 0)),
                        ("Tesla V100-SXM2-16GB", 16 * 1024**3, (7, 0)))
    assert doctor_mod._device("auto", torch) == "cuda"
    assert [c.line() for c in doctor_mod._devices(torch, "auto", "cuda")] == [
        "ok       cuda:0      NVIDIA H100 80GB HBM3, 80 GiB, compute capability 9.0",
        "ok       cuda:1      Tesla V100-SXM2-16GB, 16 GiB, compute capability 7.0"]
    assert [c.state for c in doctor_mod._precision(torch, "cuda:0")] == ["ok", "ok"]
    bf16, tf32 = doctor_mod._precision(torch, "cuda:1")
    assert bf16.state == "warning" and "set BF16=False" in bf16.fix
    assert tf32.state == "warning" and "7.0" in tf32.detail
    missing = doctor_mod._devices(torch, "cuda:2", "cuda:2")[-1]
    assert missing.blocking and missing.line().startswith(
        "missing  cuda        cuda:2 does not exist here (2 CUDA devices)")
    assert doctor_mod._precision(torch, "cuda:2") == []
