"""The usage log read back: one query behind `ember usage` and `ember dashboard`, so both
show the same numbers for the same window and filter.

A report has totals, and the same sums by model (with latency p50 and p95), by tag, by
time (days; hours for a window of two days or less) and by time and model. A cached call
counts as a call and in `saved`, never in tokens or cost; `unknown` counts the calls whose
usage the provider did not report (not in the sums of tokens and cost); `waited` is
seconds spent waiting for a turn under pacing, `rate_limited` the HTTP 429 answers seen.
Left out: prompts and answers, and any write.
"""

import contextlib
import time
from typing import Any

from ._log import LOG, MIGRATIONS
from ._spend import percentile
from ._sqlite import connect, home
from .errors import ConfigError

__all__ = ["report", "window"]

TOKENS = ", ".join(f"sum({kind}_tokens * (1 - cached)) AS {kind}_tokens"
                   for kind in ("input", "output", "cache_read", "cache_write"))
SUMS = (f"count(*) AS calls, sum(cached) AS cached, {TOKENS}, count(*) - count(output_tokens) "
        "AS unknown, total(cost) AS cost, total(saved) AS saved, count(error) AS errors, "
        "sum(retries) AS retries, sum(rate_limited) AS rate_limited, total(waited) AS waited")
NAME = "provider || '/' || model"
FILTER = (f"time >= :since AND (:tag IS NULL OR coalesce(tag, '-') = :tag) "
          f"AND (:model IS NULL OR {NAME} = :model)")
BUCKETS = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}  # the by_time column, as strftime spells it


def window(since: str, flag: str = "--since") -> int:
    """Seconds in a window written as days or hours: 7d, 12h (else a ConfigError naming `flag`)."""
    if not since[:-1].isdigit() or since[-1:] not in ("d", "h"):
        raise ConfigError(f"{flag} takes a number of days or hours, like 7d or 12h, not {since!r}")
    return int(since[:-1]) * (86400 if since[-1] == "d" else 3600)


def report(since: str = "36500d", tag: str | None = None,
           model: str | None = None) -> dict[str, Any]:
    """Calls, tokens, cost, savings and troubles of the calls in the window (and of only
    one tag or model, given as 'provider/model' or a well-known bare name)."""
    from .providers import resolve

    seconds = window(since)
    bucket = "hour" if seconds <= 2 * 86400 else "day"  # a short window is counted by the hour
    keys = {"model": NAME, "tag": "coalesce(tag, '-')",
            "time": f"strftime('{BUCKETS[bucket]}', time, 'unixepoch')"}
    args = {"since": time.time() - seconds, "tag": tag, "model": model and "/".join(resolve(model))}
    with contextlib.closing(connect(home() / LOG, MIGRATIONS)) as db:

        def sums(*names: str) -> list[dict[str, Any]]:
            """The sums grouped by `names`; with none, one row of totals."""
            columns = "".join(f"{keys[name]} AS {name}, " for name in names)
            places = ", ".join(str(place) for place in range(1, len(names) + 1))
            grouped = f" GROUP BY {places} ORDER BY {places}" if names else ""
            rows = db.execute(f"SELECT {columns}{SUMS} FROM calls WHERE {FILTER}{grouped}", args)
            return [dict(zip([d[0] for d in rows.description], row, strict=True)) for row in rows]

        by_model, latencies = sums("model"), dict[str, list[float]]()
        for name, latency in db.execute(f"SELECT {NAME}, latency FROM calls WHERE {FILTER} "
                                        "AND latency IS NOT NULL ORDER BY 2", args):
            latencies.setdefault(name, []).append(latency)
        for row in by_model:
            row["p50"], row["p95"] = (percentile(latencies.get(row["model"], []), q)
                                      for q in (50, 95))
        return {"since": since, "tag": tag, "model": args["model"], "bucket": bucket,
                "totals": {name: value or 0 for name, value in sums()[0].items()},
                "by_model": by_model, "by_tag": sums("tag"), "by_time": sums("time"),
                "by_time_and_model": sums("time", "model")}
