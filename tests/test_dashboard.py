"""`ember dashboard` in a real headless Chromium: Debian's chromium, driven by selenium
through /usr/bin/chromedriver, so nothing is downloaded. The browser may reach 127.0.0.1
only (every other host fails to resolve, through a proxy that does not exist).

A usage log with known rows is served by the real command. The page must show what the
rows add up to, which is also what `ember usage --json` says; each chart has a bar or
point per group; a tag filter changes them; a call made while the page is open shows up;
the `--html` file shows the same offline. This run also writes docs/dashboard.png, the
picture in the README.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import OpenAIServer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from ember import _log, models
from ember._log import LOG, MIGRATIONS
from ember._sqlite import connect

ROOT = Path(__file__).parent.parent
SCREENSHOT = ROOT / "docs" / "dashboard.png"
CLI = [sys.executable, "-c", "import sys, ember.cli; sys.exit(ember.cli.main())"]
MODELS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5"),
          ("google", "gemini-2.5-flash")]
COLUMNS = ("time, provider, model, tag, input_tokens, output_tokens, cost, latency, cached, "
           "retries, error, prompt, response, rate_limited, waited, first_token, saved")
SECRET = "a prompt that was logged and must never be shown"


def known_rows(now: float) -> list[dict[str, Any]]:
    """A week of calls to three models under two tags and none: some failed after 429s,
    some answered from the cache, some waited on pacing; plus one call from last month."""
    pick = random.Random(12)
    rows = []
    for i in range(90):
        provider, model = MODELS[i % 3]
        failed, cached = i % 11 == 4, i % 7 == 2
        tokens_in, tokens_out = (0, 0) if failed else (pick.randint(200, 3000),
                                                       pick.randint(20, 400))
        price = tokens_in * 1e-6 * (i % 3 + 1) + tokens_out * 4e-6 * (i % 3 + 1)
        rows.append({
            "time": now - pick.uniform(60, 6.5 * 86400), "provider": provider, "model": model,
            "tag": ["nightly", "classify", None][i % 4 % 3], "input_tokens": tokens_in,
            "output_tokens": tokens_out, "cost": 0.0 if failed or cached else price,
            "latency": None if failed else (0.0 if cached else pick.uniform(0.3, 2.5 + i % 3)),
            "cached": int(cached), "retries": 2 if failed else i % 5 == 0,
            "error": "RateLimited" if failed else None, "prompt": SECRET, "response": SECRET,
            "rate_limited": 3 if failed else int(i % 9 == 0), "waited": (i % 4) * 0.5,
            "first_token": None, "saved": price if cached and not failed else 0.0})
    rows.append({**rows[0], "time": now - 30 * 86400, "tag": "last-month"})  # out of the window
    return rows


def write_log(home: Path, rows: list[dict[str, Any]]) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.closing(connect(home / LOG, MIGRATIONS)) as db:
        db.executemany(f"INSERT INTO calls ({COLUMNS}) VALUES "
                       f"({', '.join(':' + name for name in COLUMNS.split(', '))})", rows)


def expected(rows: list[dict[str, Any]], tag: str | None = None,
             model: str | None = None) -> dict[str, Any]:
    """What the rows of the last 7 days add up to, counted here without SQL."""
    since = time.time() - 7 * 86400
    rows = [row for row in rows if row["time"] >= since and tag in (None, row["tag"])
            and model in (None, row["model"])]
    sent = [row for row in rows if not row["cached"]]
    day = [datetime.datetime.fromtimestamp(row["time"], datetime.UTC).date() for row in rows]
    return {
        "calls": len(rows), "tokens": sum(r["input_tokens"] + r["output_tokens"] for r in sent),
        "cost": sum(row["cost"] for row in rows), "saved": sum(row["saved"] for row in rows),
        "errors": sum(row["error"] is not None for row in rows),
        "retries": sum(row["retries"] for row in rows),
        "429s": sum(row["rate_limited"] for row in rows),
        "waited": sum(row["waited"] for row in rows),
        "days": len(set(day)), "models": len({row["model"] for row in rows}),
        "day_models": len({(d, row["model"]) for d, row in zip(day, rows, strict=True)}),
        "tags": len({row["tag"] for row in rows})}


def ember(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          check=True, env={**os.environ, "EMBER_HOME": str(home)})


@contextlib.contextmanager
def dashboard(home: Path, *args: str) -> Iterator[str]:
    """The real `ember dashboard` on any free port: yields the URL it prints."""
    server = subprocess.Popen([*CLI, "dashboard", "--port", "0", "--no-browser", *args],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "EMBER_HOME": str(home)})
    try:
        assert server.stdout is not None
        found = re.search(r"http://127\.0\.0\.1:\d+/\S*", server.stdout.readline())
        assert found, "ember dashboard printed no URL"
        yield found[0]
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE "
                 "127.0.0.1", "--proxy-server=127.0.0.1:9", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--disable-extensions"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    home, rows = tmp_path_factory.mktemp("week") / "ember-home", known_rows(time.time())
    write_log(home, rows)
    return home, rows


def shown(driver: webdriver.Chrome, calls: int) -> dict[str, Any]:
    """Wait until the page shows `calls` calls; then its totals (the numbers behind them
    and the text), and how many bars and points each chart has."""
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "return document.querySelector('#totals .stat')?.dataset.value") == str(calls))
    stats = {s.find_element(By.TAG_NAME, "span").text.split(":")[0]: (
        float(s.get_attribute("data-value") or "nan"), s.find_element(By.TAG_NAME, "b").text)
        for s in driver.find_elements(By.CSS_SELECTOR, "#totals .stat")}
    count = {name: len(driver.find_elements(By.CSS_SELECTOR, selector)) for name, selector in [
        ("cost bars", "#cost rect.bar"), ("call points", "#calls circle.point.calls"),
        ("error points", "#calls circle.point.errors"), ("p50 bars", "#latency rect.p50"),
        ("p95 bars", "#latency rect.p95"), ("tag rows", "#tags tbody tr")]}
    return {"stats": stats, "count": count}


def assert_page_matches(page: dict[str, Any], want: dict[str, Any], usage: dict[str, Any]):
    stats, totals = page["stats"], usage["totals"]
    values = {label: value for label, (value, _) in stats.items()}
    assert values == pytest.approx({
        "calls": want["calls"], "tokens": want["tokens"], "cost": want["cost"],
        "saved by the cache": want["saved"], "errors": want["errors"],
        "retries": want["retries"], "429s": want["429s"], "waited on pacing": want["waited"]})
    assert values == pytest.approx({  # and `ember usage --json`, to the last digit
        "calls": totals["calls"], "tokens": totals["input_tokens"] + totals["output_tokens"],
        "cost": totals["cost"], "saved by the cache": totals["saved"],
        "errors": totals["errors"], "retries": totals["retries"],
        "429s": totals["rate_limited"], "waited on pacing": totals["waited"]}, rel=1e-12)
    assert stats["calls"][1] == str(want["calls"]) and stats["429s"][1] == str(want["429s"])
    assert stats["cost"][1] == f"${want['cost']:#.3g}"  # under $1: three significant digits
    assert page["count"] == {
        "cost bars": want["day_models"], "call points": want["days"],
        "error points": want["days"], "p50 bars": want["models"], "p95 bars": want["models"],
        "tag rows": want["tags"]}


def no_console_errors(driver: webdriver.Chrome) -> None:
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_the_page_adds_up_the_log_as_ember_usage_does(
        browser: webdriver.Chrome, week: tuple[Path, list[dict[str, Any]]]):
    home, rows = week
    usage = json.loads(ember(home, "usage", "--since", "7d", "--json").stdout)
    with dashboard(home, "--since", "7d") as url:
        browser.get(url)
        page = shown(browser, expected(rows)["calls"])
        assert_page_matches(page, expected(rows), usage)
        latency = [float(bar.get_attribute("data-value") or "nan") for bar in
                   browser.find_elements(By.CSS_SELECTOR, "#latency rect.bar")]
        assert latency == pytest.approx([row[q] for row in usage["by_model"]
                                         for q in ("p50", "p95")])
        no_console_errors(browser)
        source = urllib.request.urlopen(url, timeout=10).read().decode()
        origin = url.split("/?")[0].rstrip("/")
        requested = browser.execute_script("return [...performance.getEntriesByType('navigation'"
                                           "), ...performance.getEntriesByType('resource')]"
                                           ".map(entry => entry.name)")
        text = browser.find_element(By.TAG_NAME, "body").text
        height = browser.execute_script(  # the whole page, down to the end of its table
            "return Math.ceil(document.getElementById('tags').getBoundingClientRect().bottom)")
        height += 24
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))  # the README's picture
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert any(name.startswith(f"{origin}/data.json") for name in requested)
    assert all(name.startswith(origin + "/") for name in requested)  # nothing else was asked
    assert set(re.findall(r"https?://[^\s\"'<>)]+", source)) == {"http://www.w3.org/2000/svg"}
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', source)
    assert csp and csp[1].startswith("default-src 'none'; ")
    assert "connect-src 'self'" in csp[1] and "unsafe" not in csp[1]
    assert re.search(r"script-src 'sha256-[\w+/=]+';", csp[1])  # its own script, by hash
    assert SECRET not in source + text and "last-month" not in text  # only the window


def test_a_tag_and_a_model_filter_change_the_totals_and_the_charts(
        browser: webdriver.Chrome, week: tuple[Path, list[dict[str, Any]]]):
    home, rows = week
    by_tag = json.loads(ember(home, "usage", "--since", "7d", "--tag", "nightly", "--json").stdout)
    by_both = json.loads(ember(home, "usage", "--since", "7d", "--tag", "nightly", "--model",
                               "gpt-4o-mini", "--json").stdout)
    with dashboard(home) as url:
        browser.get(url)
        everything = shown(browser, expected(rows)["calls"])
        Select(browser.find_element(By.ID, "tag")).select_by_visible_text("nightly")
        nightly = shown(browser, expected(rows, "nightly")["calls"])
        assert_page_matches(nightly, expected(rows, "nightly"), by_tag)
        assert nightly["count"]["cost bars"] < everything["count"]["cost bars"]
        assert browser.current_url.endswith("?tag=nightly")  # a link to this view
        Select(browser.find_element(By.ID, "model")).select_by_visible_text("openai/gpt-4o-mini")
        both = shown(browser, expected(rows, "nightly", "gpt-4o-mini")["calls"])
        assert_page_matches(both, expected(rows, "nightly", "gpt-4o-mini"), by_both)
        assert both["count"]["p50 bars"] == 1
        no_console_errors(browser)


def test_a_call_made_while_the_page_is_open_shows_up(
        browser: webdriver.Chrome, openai_srv: OpenAIServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    home, an_hour_ago = tmp_path / "live", time.time() - 3600
    write_log(home, [{**row, "time": an_hour_ago} for row in known_rows(time.time())[:3]])
    monkeypatch.setenv("EMBER_HOME", str(home))  # where this process logs its calls
    with dashboard(home, "--since", "1d") as url:
        browser.get(url)
        before = shown(browser, 3)["stats"]
        openai_srv.usage = (1200, 300)
        models("gpt-4o-mini", "Hi")  # a job in another process than the server's
        _log.flush()
        after = shown(browser, 4)["stats"]  # within a refresh or two, without a reload
        no_console_errors(browser)
    assert after["tokens"][0] == before["tokens"][0] + 1500
    assert after["cost"][0] == pytest.approx(before["cost"][0] + (1200 * 0.15 + 300 * 0.6) / 1e6)


def test_the_html_file_shows_the_same_page_offline(
        browser: webdriver.Chrome, week: tuple[Path, list[dict[str, Any]]], tmp_path: Path):
    home, rows = week
    usage = json.loads(ember(home, "usage", "--since", "7d", "--json").stdout)
    report = tmp_path / "report.html"
    ember(home, "dashboard", "--since", "7d", "--html", str(report))
    browser.get(report.as_uri())
    assert_page_matches(shown(browser, expected(rows)["calls"]), expected(rows), usage)
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert "connect-src 'none'" in report.read_text()  # a snapshot asks nothing of anyone
    assert oct(report.stat().st_mode & 0o777) == "0o600"
    no_console_errors(browser)


def test_the_page_stays_within_its_400_lines():
    files = [ROOT / "src" / "ember" / f"dashboard.{kind}" for kind in ("html", "css", "js")]
    assert sum(len(path.read_text().splitlines()) for path in files) <= 400
