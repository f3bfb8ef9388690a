"""The dashboard and a Paxos trace in a real browser: headless Chromium driven by Selenium.

How: Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when it runs as root),
started offline (no background networking, a fresh profile). For the dashboard, a real 3-node
``kv cluster up`` cluster in a temporary directory and ``kv dashboard --port 0`` as a child process;
everything on 127.0.0.1, every wait a poll against a deadline, teardown in ``finally`` (the dashboard
by its pid, the cluster by ``kv cluster down`` and then SIGKILL of any pid of ours that is left).

Checked on the dashboard page: the three nodes appear with exactly one leader; after puts through the
client every node's decided cell grows (the page updates) and the throughput chart has samples; the
page links to a trace; the kill button of a follower turns its row dead and unreachable, and the
restart button brings it back. Checked on a trace page (``/trace`` of the dashboard, and a file written
by ``kv trace``): the arrows of one round are drawn, visible, in the order Prepare, Promise, Accept,
Accepted, Decide down the page; the leader-change page shows a crash, a lost message and a restart.

Screenshots go to the test's temporary directory, and to docs/img/ for the README when
``KV_WRITE_SCREENSHOTS=1``. Without Chromium the tests skip, except in CI (``CI`` set), where they fail.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kv_cli.cluster import process_state
from kvstore.client import Client

from ..ports import free_base_port

pytestmark = pytest.mark.slow

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
SCREENSHOT_LOAD_SECONDS = 20.0  # writes before the README's screenshot (only with KV_WRITE_SCREENSHOTS=1)
WAIT_SECONDS = 30.0
COMMAND_SECONDS = 60


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    paths = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        paths = None
    if paths is None:
        message = "needs Debian's chromium and chromium-driver and the selenium package (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check, seconds: float = WAIT_SECONDS):
    """Poll ``check()`` until it returns something truthy (returned), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the page may be between two refreshes
            last_error = exc
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {seconds:g} s (last error: {last_error!r})")


def screenshot(driver, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if os.environ.get("KV_WRITE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(DOCS_IMG / name))


def steady_writes(endpoints: list[str], seconds: float) -> None:
    """Puts through ``kv bench`` for ``seconds`` (16 in flight, open loop at 2,000/s), so that the charts
    have something to show."""
    subprocess.run([*kv_command(), "--endpoints", ",".join(endpoints), "bench", "--duration", str(seconds),
                    "--clients", "16", "--rate", "2000", "--no-progress"], capture_output=True,
                   timeout=seconds + COMMAND_SECONDS)


def kv_command() -> list[str]:
    beside = Path(sys.executable).parent / "kv"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "kv_cli"]


ROWS_SCRIPT = """
return Array.from(document.querySelectorAll('#nodes tbody tr.node')).map((row) => {
  const cells = {};
  for (const td of row.querySelectorAll('td')) cells[td.classList[0]] = td.textContent;
  cells.id = row.dataset.id;
  cells.reachable = row.dataset.reachable === '1';
  cells.leader = row.classList.contains('leader');
  return cells;
});
"""


def rows(driver) -> dict:
    """node id -> {cell class: text} of the dashboard's node table, plus reachable and leader flags (read in one
    script call: the page rebuilds the table on every refresh)."""
    return {cells["id"]: cells for cells in driver.execute_script(ROWS_SCRIPT)}


def test_the_dashboard_shows_the_nodes_updates_and_its_buttons_kill_and_restart(browser, tmp_path):
    cluster_dir = tmp_path / "cluster"
    env = dict(os.environ, KV_CLUSTER_DIR=str(cluster_dir))
    env.pop("KV_ENDPOINTS", None)
    kv = kv_command()
    dashboard = None
    try:
        up = subprocess.run([*kv, "cluster", "up", "--detach", "--base-port", str(free_base_port())], env=env,
                            capture_output=True, timeout=COMMAND_SECONDS)
        assert up.returncode == 0, up.stderr
        endpoints = json.loads((cluster_dir / "cluster.json").read_text())["endpoints"]
        dashboard = subprocess.Popen([*kv, "dashboard", "--port", "0", "--interval", "0.5"], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready, _, _ = select.select([dashboard.stderr], [], [], WAIT_SECONDS)
        assert ready, "kv dashboard did not say where it serves"
        line = dashboard.stderr.readline().decode()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert "fault buttons" in line

        browser.get(url)
        table = wait_for("three nodes, one leader", lambda: (lambda r: r if len(r) == 3 and sum(
            c["leader"] for c in r.values()) == 1 and all(c["reachable"] for c in r.values()) else None)(rows(browser)))
        leader = next(i for i, c in table.items() if c["leader"])
        before = {i: int(c["decided"]) for i, c in table.items()}
        with Client(endpoints, timeout=10) as client:
            for i in range(60):
                client.put(f"web/{i}", "x" * 20)
        wait_for("every node's decided slot to grow on the page",
                 lambda: all(int(c["decided"]) > before[i] for i, c in rows(browser).items()))
        wait_for("throughput samples", lambda: int(browser.find_element(
            "css selector", "#chart-throughput").get_attribute("data-points") or 0) >= 2)
        links = [a.get_attribute("href") for a in browser.find_elements("css selector", "a")]
        assert any("/trace?" in link for link in links)
        if os.environ.get("KV_WRITE_SCREENSHOTS") == "1":
            steady_writes(endpoints, SCREENSHOT_LOAD_SECONDS)  # for the README: charts with a history
        screenshot(browser, tmp_path, "dashboard.png")

        follower = min(i for i in table if i != leader)
        browser.find_element("css selector", f'button.fault[data-action="kill"][data-node="{follower}"]').click()
        wait_for(f"node {follower} shown dead and unreachable",
                 lambda: (lambda c: c["process"] == "dead" and not c["reachable"])(rows(browser)[follower]))
        assert "2/3 nodes reachable" in browser.find_element("id", "summary").text
        screenshot(browser, tmp_path, "dashboard-killed.png")
        wait_for("the buttons back after the kill", lambda: browser.find_element(
            "css selector", f'button.fault[data-action="restart"][data-node="{follower}"]').is_enabled())
        browser.find_element("css selector", f'button.fault[data-action="restart"][data-node="{follower}"]').click()
        wait_for(f"node {follower} running and reachable again",
                 lambda: (lambda c: c["process"] == "running" and c["reachable"])(rows(browser)[follower]))
    finally:
        if dashboard is not None:
            dashboard.kill()
            dashboard.wait(timeout=10)
        if (cluster_dir / "cluster.json").exists():
            subprocess.run([*kv, "cluster", "down"], env=env, capture_output=True, timeout=COMMAND_SECONDS)
            for node in json.loads((cluster_dir / "cluster.json").read_text())["nodes"]:
                if process_state(node.get("pid"), node) != "dead":
                    os.kill(node["pid"], signal.SIGKILL)


def arrows(driver, kind: str) -> list:
    return [e for e in driver.find_elements("css selector", f"line.msg-{kind}") if e.is_displayed()]


def test_a_trace_page_draws_the_arrows_of_a_round_in_order(browser, tmp_path):
    page = tmp_path / "round.html"
    out = subprocess.run([*kv_command(), "trace", "--scenario", "round", "--seed", "1", "-o", str(page)],
                         capture_output=True, timeout=COMMAND_SECONDS)
    assert out.returncode == 0, out.stderr
    browser.get(page.as_uri())
    tops = []
    for kind in ("Prepare", "Promise", "Accept", "Accepted", "Decide"):
        drawn = wait_for(f"{kind} arrows", lambda kind=kind: arrows(browser, kind))
        assert all(e.size["width"] > 0 for e in drawn), kind
        tops.append(min(e.location["y"] for e in drawn))
    assert tops == sorted(tops), tops  # down the page: phase 1, then phase 2, then the decision
    assert browser.find_elements("css selector", "g.mark-leader")
    screenshot(browser, tmp_path, "trace-round.png")

    page = tmp_path / "leader-change.html"
    out = subprocess.run([*kv_command(), "trace", "--scenario", "leader-change", "--seed", "1", "-o", str(page)],
                         capture_output=True, timeout=COMMAND_SECONDS)
    assert out.returncode == 0, out.stderr
    browser.get(page.as_uri())
    for selector in ("g.mark-crash", "g.mark-restart", "line.lost", "g.mark-replayed"):
        assert wait_for(selector, lambda s=selector: browser.find_elements("css selector", s)), selector
    assert len(browser.find_elements("css selector", "g.mark-leader")) == 2
    screenshot(browser, tmp_path, "trace-leader-change.png")
