"""What a model call costs: list prices in US dollars per million tokens.

The table is a convenience, not a bill: prices change, so check the vendors' pages and pass an
override (``prices=``) for anything missing or different. An unknown model costs ``None`` —
never a silent zero — so reports can say "unknown" instead of under-counting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple


class Price(NamedTuple):
    input_per_mtok: float  # USD per million input (prompt) tokens
    output_per_mtok: float  # USD per million output (completion) tokens


# An override table: model name -> Price, or (input, output) USD per million tokens.
PriceTable = Mapping[str, Price | tuple[float, float]]


# List prices for standard requests (no batch, cache or long-context rates), from the vendors'
# model and pricing pages as of late 2026. Verify before relying on totals.
PRICES: dict[str, Price] = {
    # Anthropic
    "claude-fable-5-1": Price(10.0, 50.0),
    "claude-opus-5-5": Price(4.0, 20.0),
    "claude-opus-5": Price(5.0, 25.0),
    "claude-sonnet-5-5": Price(2.0, 10.0),
    "claude-sonnet-5": Price(2.0, 10.0),
    "claude-opus-4-6": Price(5.0, 25.0),
    "claude-sonnet-4-6": Price(3.0, 15.0),
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    # OpenAI
    "gpt-5.5": Price(5.0, 30.0),
    "gpt-5.4": Price(2.5, 15.0),
    "gpt-5.4-mini": Price(0.75, 4.5),
    "gpt-5": Price(1.25, 10.0),
    "gpt-5-mini": Price(0.25, 2.0),
    "gpt-4.1": Price(2.0, 8.0),
    "gpt-4.1-mini": Price(0.4, 1.6),
    "gpt-4o": Price(2.5, 10.0),
    "gpt-4o-mini": Price(0.15, 0.6),
    "o3": Price(2.0, 8.0),
    "o4-mini": Price(1.1, 4.4),
}

# Vendors name snapshots by date ("claude-sonnet-4-5-20250929", "gpt-4.1-2025-04-14"); they
# price like the base name. Nothing else is guessed: "gpt-5.4-nano" is not "gpt-5.4".
_DATE_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


def price_of(model: str, prices: PriceTable | None = None) -> Price | None:
    """The price of ``model`` (override table first, then the built-in one), or None."""
    table: dict[str, Price] = dict(PRICES)
    for name, value in (prices or {}).items():
        table[name] = Price(*value)
    base = _DATE_SUFFIX.sub("", model)
    for name in (model, base):
        if name in table:
            return table[name]
    return None


def cost_usd(
    model: str,
    input_tokens: int | None,
    output_tokens: int | None,
    prices: PriceTable | None = None,
) -> float | None:
    """Dollars for one call, or None when the price or the token counts are unknown."""
    price = price_of(model, prices)
    if price is None or input_tokens is None or output_tokens is None:
        return None
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
