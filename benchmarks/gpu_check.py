"""Every CUDA-specific path of autoresearch, checked at once on a GPU machine.

Written to finish in under 8 minutes on one H100-class GPU (an estimate: ~3 of them are the two
60 s baseline measurements; it had not run on a GPU when it was written). It says so when a
run takes longer.

Steps, in order; the first that breaks stops the check with its name and why (exit 1):

  setup       the dataset (offline corpus by default) and a small probe source
  cuda        torch sees a CUDA GPU; without one the check says so and exits 2
  sandbox     a measurement on CUDA with the Landlock fence up: the probe's read of the
              validation split is refused, and it still trains (cold: no warm slot)
  warm-slot   two jobs through one runner.Slot on CUDA: the second runs in processes started
              while the first trained; none of them was forked from a process that had
              initialised CUDA (on a GPU the slot starts fresh Pythons, never fork servers)
  workers     two workers on GPU 0 at once; with several GPUs, one worker per GPU, each job
              seeing only its own device
  baseline    baseline/train.py's CUDA preset (bf16 autocast) for --budget seconds (default
              60), with and without torch.compile: tokens/s, MFU, peak memory, val_bpb
  ray         a job through the Ray backend on a local head, reserving num_gpus=1
  loop        `autoresearch loop --agent playbook --budget 3` on CUDA, end to end

At the end: tables of the baseline's figures and of the measurement's fixed cost (cold and
warm, each part), and one line per step.

    python benchmarks/gpu_check.py [--budget 60] [--data offline|FILE] [--only STEP ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch import data, mfu, runner, sandbox
from autoresearch.metrics import Budget, Metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("setup", "cuda", "sandbox", "warm-slot", "workers", "baseline", "ray", "loop")
PROBE_TOKENS = 8 * 256 * 40  # 40 steps of the probe's batch
LOOP_TOKENS = 400_000  # per measurement in the loop step: a few dozen steps of the CUDA preset
TARGET_SECONDS = 480
PARTS = ("start_seconds", "setup_seconds", "train_seconds", "export_seconds",
         "eval_start_seconds", "eval_seconds", "exposed_seconds", "total_seconds")

# A small causal model that also reports, on its stdout (run.log), what the checks look for:
# whether a read outside the fence was refused, which GPU it sees, and how it was started.
PROBE = '''"""gpu_check's probe: a tiny causal model that reports how its process was set up."""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FORBIDDEN = {forbidden!r}  # the validation split: the sandbox must refuse it


def report():
    try:
        Path(FORBIDDEN).read_bytes()
        print("probe: forbidden read allowed", flush=True)
    except PermissionError:
        print("probe: forbidden read refused", flush=True)
    # its own command line: a fork server's child carries the server's (the sandbox hides
    # every other process's /proc entries, its parent's included)
    try:
        cmd = Path("/proc/self/cmdline").read_bytes().replace(b"\\0", b" ").decode(errors="replace")
    except OSError as e:
        cmd = f"unreadable ({{e.__class__.__name__}})"
    bad_fork = getattr(torch.cuda, "_is_in_bad_fork", lambda: False)()
    print(f"probe: started_as={{cmd.strip()}}", flush=True)
    print(f"probe: bad_fork={{bad_fork}} visible={{torch.cuda.device_count()}}", flush=True)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"probe: uuid={{getattr(p, 'uuid', '?')}} name={{p.name}}", flush=True)


class Probe(nn.Module):
    def __init__(self, vocab, max_len, width=64):
        super().__init__()
        self.width = width
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_len, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        q, k, v = self.qkv(x).split(self.width, dim=-1)
        x = x + F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.mlp(x))


def train(run):
    report()
    model = Probe(run.vocab_size, run.seq_len).to(run.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    while run.tokens_left() >= 8 * run.seq_len and run.time_left() > 0:
        x, y = run.get_batch(8, run.seq_len)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model
'''


class StepFailed(Exception):
    pass


class NoCuda(Exception):
    pass


@dataclass
class Check:
    """What the steps share, and what they found."""

    work: Path
    budget: float
    dataset: str
    prepared: data.PreparedData | None = None
    probe: Path | None = None
    lines: list[tuple[str, str, float]] = field(default_factory=list)  # step, result, seconds
    baseline: dict[str, Metrics] = field(default_factory=dict)
    cost: dict[str, Metrics] = field(default_factory=dict)  # cold, warm

    def job(self, source: Path, name: str, budget: Budget, seed: int = 0) -> runner.Job:
        assert self.prepared is not None
        return runner.Job(source=source, data=self.prepared.path, budget=budget, seed=seed,
                          device="cuda", out_dir=self.work / "out" / name,
                          expect_sha256=self.prepared.sha256)


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise StepFailed(why)


def _ok(m: Metrics, what: str) -> Metrics:
    _need(m.ok, f"{what}: status {m.status.value}: {m.error or 'no reason given'}")
    return m


def _probe_lines(out_dir: Path) -> dict[str, str]:
    """The probe's report from its run.log: key -> value."""
    log = (out_dir / "run.log").read_text(encoding="utf-8", errors="replace")
    found: dict[str, str] = {}
    for line in log.splitlines():
        if line.startswith("probe: forbidden read "):
            found["read"] = line.split()[-1]
        elif line.startswith("probe: started_as="):
            found["started_as"] = line.removeprefix("probe: started_as=")
        elif line.startswith("probe: "):
            for pair in line.removeprefix("probe: ").split(" ", 1):
                key, _, value = pair.partition("=")
                found[key] = value
    _need("read" in found, f"the probe's report is missing from {out_dir / 'run.log'}")
    return found


# -- steps ----------------------------------------------------------------------------------------
def step_setup(c: Check) -> str:
    import torch

    c.prepared = data.prepare(c.dataset)
    c.probe = c.work / "probe"
    c.probe.mkdir(parents=True, exist_ok=True)
    (c.probe / "train.py").write_text(
        PROBE.format(forbidden=str(c.prepared.path / "val.bin")), encoding="utf-8")
    return (f"torch {torch.__version__}, dataset {c.prepared.name} "
            f"({c.prepared.train_tokens:,} train tokens), Landlock ABI v{sandbox.abi()}")


def step_cuda(c: Check) -> str:
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
        raise NoCuda(f"no CUDA device here (torch {torch.__version__}, {build}): gpu_check "
                     "checks the CUDA paths and needs a GPU; `autoresearch doctor` says why "
                     "there is none")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return "; ".join(f"cuda:{i} {n} ({mfu.gpu_label(n) or 'no peak known: no MFU'})"
                     for i, n in enumerate(names))


def step_sandbox(c: Check) -> str:
    assert c.probe is not None
    job = c.job(c.probe, "sandbox", Budget(kind="tokens", amount=PROBE_TOKENS))
    m = _ok(runner.measure(job), "the probe on CUDA")
    c.cost["cold"] = m
    got = _probe_lines(job.out_dir)
    abi = sandbox.abi()
    if abi == 0:
        return (f"n/a: no Landlock on this kernel (sandbox {m.sandbox}); the probe trained on "
                "CUDA unfenced")
    _need(m.sandbox.startswith("landlock"), f"the measurement records sandbox {m.sandbox!r}")
    _need(got["read"] == "refused", "the fenced probe could read the validation split")
    return f"{m.sandbox}: the probe's read of val.bin was refused, and it trained on CUDA"


def step_warm_slot(c: Check) -> str:
    assert c.probe is not None
    budget = Budget(kind="tokens", amount=PROBE_TOKENS)
    with runner.Slot(c.work / "slot") as slot:
        jobs = [c.job(c.probe, f"slot-{i}", budget, seed=i) for i in range(2)]
        got = [_ok(runner.measure(j, slot=slot), f"slot job {i}") for i, j in enumerate(jobs)]
    _need(got[1].warm, "the slot's second job did not run in processes started ahead")
    c.cost["warm"] = got[1]
    for j in jobs:
        probe = _probe_lines(j.out_dir)
        _need(probe.get("bad_fork") == "False", f"{j.out_dir.name}: the training process was "
              "forked from a process that had initialised CUDA")
        _need("--fork-server" not in probe.get("started_as", ""), f"{j.out_dir.name}: the "
              f"training process is a fork server's child ({probe.get('started_as')})")
    return ("second job warm; no process forked after CUDA initialisation: on a GPU the slot "
            "starts each process as a new Python (subprocess), never as a fork of a server")


def _worker(gpu: str, name: str, folder: Path) -> Any:
    from autoresearch.backends.local import LocalWorker

    return LocalWorker(name, folder, gpu=gpu)


def _side_by_side(c: Check, gpus: list[str], tag: str) -> list[tuple[runner.Job, Metrics]]:
    assert c.probe is not None
    budget = Budget(kind="tokens", amount=PROBE_TOKENS)
    # a folder each: two runner.Slots of one process in one folder would share pid-file names
    workers = [_worker(g, f"w{i} gpu {g}", c.work / tag / f"w{i}") for i, g in enumerate(gpus)]
    jobs = [c.job(c.probe, f"{tag}-{i}", budget, seed=i) for i in range(len(gpus))]
    results: list[Metrics | None] = [None] * len(gpus)

    def run(i: int) -> None:
        results[i] = workers[i].measure(jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(gpus))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for w in workers:
            w.close()
    out = []
    for i, (job, m) in enumerate(zip(jobs, results, strict=True)):
        _need(m is not None, f"worker {i} returned nothing")
        assert m is not None
        out.append((job, _ok(m, f"{tag} worker {i} (gpu {gpus[i]})")))
    return out


def step_workers(c: Check) -> str:
    import torch

    done = _side_by_side(c, ["0", "0"], "gpu0x2")
    speeds = [m.train_tokens / max(m.train_seconds, 1e-9) for _, m in done]
    text = f"2 workers on GPU 0: both ok ({', '.join(f'{s:,.0f}' for s in speeds)} tokens/s)"
    n = torch.cuda.device_count()
    if n < 2:
        return text + "; one GPU here: one worker per GPU not checked"
    done = _side_by_side(c, [str(i) for i in range(n)], "per-gpu")
    for i, (job, _) in enumerate(done):
        probe = _probe_lines(job.out_dir)
        _need(probe.get("visible") == "1", f"the job on GPU {i} saw {probe.get('visible')} "
              "devices, not only its own")
        want = str(getattr(torch.cuda.get_device_properties(i), "uuid", "?"))
        _need(probe.get("uuid") == want, f"the job for GPU {i} ran on {probe.get('uuid')}, "
              f"not {want}")
    return text + f"; {n} workers, one per GPU: each job saw only its own"


def _baseline_source(dst: Path, compile_: bool) -> Path:
    """baseline/train.py in ``dst`` (over the one there), its CUDA preset compiled or not."""
    dst.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "baseline" / "train.py").read_text(encoding="utf-8")
    preset = re.search(r"^CUDA = dict\((.*?)^\)", text, flags=re.S | re.M)
    _need(preset is not None, "baseline/train.py has no `CUDA = dict(...)` preset")
    assert preset is not None
    body = preset.group(1)
    _need(re.search(r"\bBF16=True\b", body) is not None, "the CUDA preset does not autocast "
          "to bf16 (BF16=True)")
    _need(re.search(r"\bCOMPILE=True\b", body) is not None, "the CUDA preset does not compile")
    if not compile_:
        body = re.sub(r"\bCOMPILE=True\b", "COMPILE=False", body)
    (dst / "train.py").write_text(text[:preset.start(1)] + body + text[preset.end(1):],
                                  encoding="utf-8")
    return dst


def step_baseline(c: Check) -> str:
    budget = Budget(kind="time", amount=c.budget)
    for name, compile_ in (("compile", True), ("no compile", False)):
        src = _baseline_source(c.work / f"baseline-{name.replace(' ', '-')}", compile_)
        m = _ok(runner.measure(c.job(src, f"baseline-{name.replace(' ', '-')}", budget)),
                f"the baseline ({name})")
        _need(bool(m.device_name), f"the baseline ({name}): no GPU name in the measurement")
        peak = mfu.peak_flops(m.device_name or "", "bf16")
        _need(m.flops_per_token is not None and m.flops_per_token > 0,
              f"the baseline ({name}): no FLOP count in the measurement")
        _need(peak is None or m.mfu is not None,
              f"the baseline ({name}): no MFU for {m.device_name}, whose peak is known")
        c.baseline[name] = m
    rates = {k: m.train_tokens / max(m.train_seconds, 1e-9) for k, m in c.baseline.items()}
    return (f"{rates['compile']:,.0f} tokens/s compiled, {rates['no compile']:,.0f} without "
            f"({rates['compile'] / max(rates['no compile'], 1e-9):.2f}x)")


@contextlib.contextmanager
def _no_ray_address() -> Iterator[None]:
    """A local head of our own, whatever RAY_ADDRESS says."""
    old = os.environ.pop("RAY_ADDRESS", None)
    try:
        yield
    finally:
        if old is not None:
            os.environ["RAY_ADDRESS"] = old


def step_ray(c: Check) -> str:
    assert c.probe is not None
    from autoresearch.backends.ray import ray_workers

    with _no_ray_address():
        workers = ray_workers(None, 1, device="cuda", threads=None, folder=c.work / "ray")
        try:
            job = c.job(c.probe, "ray", Budget(kind="tokens", amount=PROBE_TOKENS))
            m = _ok(workers[0].measure(job), "the probe through Ray")
        finally:
            for w in workers:
                w.close()
    _need(m.worker.startswith("ray"), f"the measurement's worker is {m.worker!r}, not Ray")
    probe = _probe_lines(job.out_dir)
    _need(probe.get("visible") == "1", f"the Ray task saw {probe.get('visible')} GPUs, not the "
          "one it reserved")
    return f"ok on {m.worker}, one GPU reserved ({probe.get('name', '?')})"


def step_loop(c: Check) -> str:
    ws = c.work / "loop"
    cli = [sys.executable, "-m", "autoresearch", "--workspace", str(ws)]

    def run(*args: str, timeout: float = 420) -> str:
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=timeout)
        _need(done.returncode == 0, f"`autoresearch {' '.join(args)}` exited "
              f"{done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}")
        return done.stdout

    run("init", str(ws))
    # the compiled CUDA preset was measured by the baseline step; compiling every candidate
    # anew would take most of the check's time, so the loop runs the preset uncompiled
    _baseline_source(ws / "baseline", compile_=False)
    run("loop", "--agent", "playbook", "--budget", "3", "--device", "cuda", "--gpu", "0",
        "--dataset", c.dataset, "--token-budget", str(LOOP_TOKENS), "--seeds", "2")
    rows = json.loads(run("history", "--json"))
    candidates = [r for r in rows if r["kind"] == "candidate"]
    _need(len(candidates) == 3, f"the loop recorded {len(candidates)} experiments, not 3")
    baseline = next((r for r in rows if r["kind"] == "baseline"), None)
    _need(baseline is not None and baseline["val_bpb"] is not None, "no baseline value")
    assert baseline is not None
    shown = json.loads(run("show", str(baseline["id"]), "--json"))
    with_mfu = [m for m in shown["measurements"] if m.get("mfu") is not None]
    names = {m.get("device_name") for m in shown["measurements"]}
    known = any(mfu.peak_flops(n or "", "bf16") for n in names)
    _need(bool(with_mfu) or not known, "`show --json` has no MFU for the baseline's measurements")
    statuses = ", ".join(f"#{r['id']} {r['status']}" for r in candidates)
    return f"baseline {baseline['val_bpb']:.4f}; {statuses}"


STEP_FUNCS: dict[str, Callable[[Check], str]] = {
    "setup": step_setup, "cuda": step_cuda, "sandbox": step_sandbox,
    "warm-slot": step_warm_slot, "workers": step_workers, "baseline": step_baseline,
    "ray": step_ray, "loop": step_loop,
}


# -- tables ---------------------------------------------------------------------------------------
def tables(c: Check) -> str:
    out: list[str] = []
    if c.baseline:
        out.append(f"baseline, CUDA preset, bf16 autocast, {c.budget:g} s budget:")
        out.append(f"  {'':<11} {'tokens/s':>10} {'MFU':>7} {'peak MB':>8} {'val_bpb':>8} "
                   f"{'setup s':>8} {'steps':>6}")
        for name, m in c.baseline.items():
            rate = m.train_tokens / max(m.train_seconds, 1e-9)
            util = f"{m.mfu:.1%}" if m.mfu is not None else "n/a"
            out.append(f"  {name:<11} {rate:>10,.0f} {util:>7} {m.peak_memory_mb:>8.0f} "
                       f"{m.val_bpb or 0:>8.4f} {m.setup_seconds:>8.1f} {m.steps:>6}")
    if c.cost:
        out.append("fixed cost of a measurement on CUDA (probe model, seconds):")
        out.append(f"  {'part':<11} " + " ".join(f"{k:>7}" for k in c.cost))
        for part in PARTS:
            out.append(f"  {part.removesuffix('_seconds'):<11} "
                       + " ".join(f"{getattr(m, part):>7.2f}" for m in c.cost.values()))
    out.append("steps:")
    out += [f"  {name:<10} {secs:>6.1f}s  {result}" for name, result, secs in c.lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds of training for each baseline measurement")
    ap.add_argument("--data", default="offline", help="a dataset name or a text file")
    ap.add_argument("--only", nargs="+", choices=STEPS[2:], help="run only these steps "
                    "(setup and cuda always run)")
    args = ap.parse_args(argv)
    chosen = [s for s in STEPS if s in ("setup", "cuda") or not args.only or s in args.only]
    started = time.monotonic()
    c = Check(work=Path(tempfile.mkdtemp(prefix="autoresearch-gpu-check-")), budget=args.budget,
              dataset=args.data)
    for name in chosen:
        t = time.monotonic()
        print(f"[{name}] ...", flush=True)
        try:
            result = STEP_FUNCS[name](c)
        except NoCuda as e:
            shutil.rmtree(c.work, ignore_errors=True)
            print(f"gpu_check: {e}", file=sys.stderr, flush=True)
            return 2
        except Exception as e:  # any failure is this step's: name it, stop, keep the logs
            c.lines.append((name, f"FAILED: {e}", time.monotonic() - t))
            print(tables(c), flush=True)
            print(f"gpu_check FAILED at step '{name}': {e} (logs kept in {c.work})",
                  file=sys.stderr, flush=True)
            return 1
        c.lines.append((name, result, time.monotonic() - t))
        print(f"[{name}] ok: {result} ({time.monotonic() - t:.1f} s)", flush=True)
    print(tables(c))
    took = time.monotonic() - started
    over = f" (over the {TARGET_SECONDS // 60} minutes it should take)" if (
        took > TARGET_SECONDS and not args.only) else ""
    print(f"gpu_check passed: {len(chosen)} steps in {took:.0f} s{over}")
    shutil.rmtree(c.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
