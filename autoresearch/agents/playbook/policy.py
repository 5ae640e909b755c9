"""What the run has taught: which entries were tried, how they fared, what to try next.

The context's history carries titles, not catalogue ids, so every playbook title starts with
its entry's tag (``[muon] ...``). An entry is *tried* once any experiment bears its tag (an
``interrupted`` one is redone by the loop and does not count). Its result is

- a **win** when it was kept,
- a **loss** when it was discarded for being worse (delta > 0; an improvement too small to
  keep is neither),
- a **failure** when it never produced a number (rejected, crashed, timeout, invalid).

Order: the next step of the most recent win first (a knob that helped moves again the same
way), then the reverse of a loss (tried the other way once), then the rest by score. A score is
the entry's prior (expected % gain) shrunk towards what its family actually gave in this run:
``(prior + sum of the family's gains in %) / (1 + results in the family)``, where a failure
counts as a loss of the entry's own prior.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from autoresearch.agents.playbook.catalogue import BY_ID, Entry
from autoresearch.models import Context, HistoryItem

TAG = re.compile(r"^\s*\[([a-z0-9][a-z0-9.+-]*)\]")
FAILED = frozenset({"rejected", "crashed", "timeout", "invalid"})
FOLLOW_WIN = 1000.0  # score bonus of a won entry's next step: it goes first
FOLLOW_LOSS = 500.0  # score bonus of a lost entry's reverse: right after


@dataclass(frozen=True)
class Result:
    id: str
    status: str
    delta: float | None
    order: int  # position in the history: later results are fresher

    @property
    def won(self) -> bool:
        return self.status == "kept"

    @property
    def lost(self) -> bool:
        return self.status == "discarded" and self.delta is not None and self.delta > 0

    @property
    def failed(self) -> bool:
        return self.status in FAILED


def tag_of(title: str) -> str | None:
    m = TAG.match(title)
    return m.group(1) if m else None


def title_of_answer(previous: str | None) -> str | None:
    """The title of the answer a repair round trip is about (a Proposal as JSON, or text)."""
    if not previous:
        return None
    try:
        data = json.loads(previous)
        if isinstance(data, dict) and isinstance(data.get("title"), str):
            return data["title"]
    except json.JSONDecodeError:
        pass
    m = re.search(r"^TITLE:\s*(.+)$", previous, flags=re.MULTILINE)
    return m.group(1) if m else None


def results(history: Iterable[HistoryItem]) -> dict[str, Result]:
    """Entry id -> its latest result in the history (interrupted attempts do not count)."""
    out: dict[str, Result] = {}
    for i, item in enumerate(history):
        tag = tag_of(item.title)
        if tag is None or item.status == "interrupted":
            continue
        out[tag] = Result(tag, item.status, item.delta, i)
    return out


def gain_pct(r: Result, champion: float | None) -> float:
    """How much lower val_bpb got, in %; a failure costs the entry its own prior."""
    if r.failed or r.delta is None:
        entry = BY_ID.get(r.id)
        return -(abs(entry.prior) if entry else 1.0)
    scale = champion if champion and champion > 0 else 1.0
    return -100.0 * r.delta / scale


def score(entry: Entry, res: dict[str, Result], champion: float | None) -> float | None:
    """How promising ``entry`` is now; None when it is not to be proposed (yet)."""
    if entry.id in res:
        return None  # never repeat a tried idea
    bonus = 0.0
    if entry.after_win is not None:
        parent = res.get(entry.after_win)
        if parent is None or not parent.won:
            return None
        bonus = FOLLOW_WIN + parent.order  # the freshest win's next step first
    if entry.after_loss is not None:
        parent = res.get(entry.after_loss)
        if parent is None or not parent.lost:
            return None
        bonus = FOLLOW_LOSS + parent.order
    family = [r for r in res.values() if r.id in BY_ID and BY_ID[r.id].family == entry.family]
    posterior = (entry.prior + sum(gain_pct(r, champion) for r in family)) / (1 + len(family))
    return bonus + posterior


def ranked(catalogue: Iterable[Entry], context: Context,
           exclude: Iterable[str] = ()) -> list[Entry]:
    """The entries still worth proposing, best first (ties keep catalogue order)."""
    res = results(context.history)
    skip = set(exclude)
    champion = context.champion.mean if context.champion else None
    scored: list[tuple[float, int, Entry]] = []
    for i, entry in enumerate(catalogue):
        if entry.id in skip:
            continue
        if entry.cpu_bf16 and not context.device.startswith("cuda") and not host_has_bf16():
            continue
        s = score(entry, res, champion)
        if s is not None:
            scored.append((-s, i, entry))
    return [entry for _, _, entry in sorted(scored, key=lambda t: (t[0], t[1]))]


@cache
def host_has_bf16() -> bool:
    """Whether this machine's CPU multiplies bf16 natively (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))
