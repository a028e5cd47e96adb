"""The web player in a real browser (Debian chromium, headless, driven by
selenium with the system chromedriver; nothing is downloaded): sign in,
search a number of a public capture, open the call, play it (the audio
element's time advances), the SIP ladder has as many arrows as tshark counts
SIP messages in the call's pcap, a download equals the stored file, a
listener does not see another number's calls, and the auditor finds every
step in the trail. Screenshots go to $SPANREC_ARTIFACTS (default: the test's
temporary folder)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.web.conftest import PASSWORDS, folder_of

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(web_lab, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("weblog") / "web.log"
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "web", "--listen", f"127.0.0.1:{port}",
                             "--index", web_lab.index_url, "--storage", str(web_lab.out), "--insecure-cookies"],
                            cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    import urllib.request
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            urllib.request.urlopen(base + "/login", timeout=1).read()
            break
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("SPANREC_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def browser(tmp_path):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        pytest.skip("chromium / chromedriver not installed (apt chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")          # selenium must not try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(cond, timeout=20.0, what=""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _gone(element) -> bool:
    """Whether an element of the page we were on is gone (the browser left it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    return False


def _call_ids(driver) -> set[str]:
    """data-id of every call row, read in one script (no element can go stale)."""
    return set(driver.execute_script(
        "return Array.from(document.querySelectorAll('tr.call')).map(r => r.dataset.id)"))


def sign_in(driver, base: str, name: str) -> None:
    from selenium.webdriver.common.by import By
    driver.get(base + "/login")
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.ID, "signin").click()
    _wait(lambda: driver.find_elements(By.ID, "logout"), what="signed in")


def sign_out(driver) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.ID, "logout").click()
    _wait(lambda: driver.find_elements(By.ID, "signin"), what="signed out")


def tshark_sip_messages(pcap: Path) -> int:
    """SIP messages in a pcap as tshark counts them (several in one TCP segment count apart)."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", "sip", "-T", "fields", "-E", "occurrence=a",
                          "-E", "aggregator=|", "-e", "sip.CSeq"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return sum(len(line.split("|")) for line in out.splitlines() if line.strip())


def test_search_play_ladder_download_roles_and_audit(server, web_lab, browser, shots):
    from selenium.webdriver.common.by import By
    if web_lab.public is None:
        pytest.skip("public captures not available (SPANREC_CAPTURES)")
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    d = browser
    # 1. sign in, search a number (a user part here) of the public capture
    caller = subprocess.run(["tshark", "-n", "-r", str(web_lab.public), "-Y", "sip.Method == \"INVITE\"",
                             "-T", "fields", "-e", "sip.from.user"], capture_output=True, text=True,
                            check=True).stdout.split()[0]
    sign_in(d, server, "ada")
    d.save_screenshot(str(shots / "1-calls.png"))
    box = d.find_element(By.ID, "f-number")
    box.send_keys(caller)
    page = d.find_element(By.TAG_NAME, "html")
    d.find_element(By.ID, "search").click()
    # the list before the search has rows too: wait for the results page itself
    _wait(lambda: _gone(page) and d.find_elements(By.CSS_SELECTOR, "tr.call"), what="results")
    expected = {json.loads(p.read_text())["id"] for p in web_lab.out.rglob("call.json")
                if caller in json.loads(p.read_text())["from"]}
    assert _call_ids(d) == expected and expected
    d.save_screenshot(str(shots / "2-search.png"))
    rid = sorted(expected)[0]
    d.find_element(By.CSS_SELECTOR, f"tr.call[data-id='{rid}'] a").click()
    _wait(lambda: d.find_elements(By.ID, "rid"), what="call page")
    assert d.find_element(By.ID, "rid").text == rid
    # 2. the ladder: one arrow per SIP message tshark finds in the stored call.pcap
    folder = folder_of(web_lab.out, rid)
    arrows = _wait(lambda: d.find_elements(By.CSS_SELECTOR, "#ladder g.msg"), what="ladder")
    assert len(arrows) == tshark_sip_messages(folder / "call.pcap")
    # 3. play: the audio element's time advances
    d.find_element(By.ID, "play").click()
    _wait(lambda: d.execute_script("return document.getElementById('audio').currentTime") > 0.3,
          what="playback")
    assert d.execute_script("return document.getElementById('audio').paused") is False
    d.find_element(By.ID, "mute-caller").click()        # one channel muted, playback goes on
    t = d.execute_script("return document.getElementById('audio').currentTime")
    _wait(lambda: d.execute_script("return document.getElementById('audio').currentTime") > t,
          what="playback after mute")
    d.save_screenshot(str(shots / "3-call.png"))
    # 4. a download equals the stored file (the browser's fetch of the link, hashed in the page)
    href = d.find_element(By.CSS_SELECTOR, "a.download[href$='/call.pcap']").get_attribute("href")
    digest = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.arrayBuffer())
          .then(b => crypto.subtle.digest('SHA-256', b))
          .then(h => done(Array.from(new Uint8Array(h)).map(x => x.toString(16).padStart(2, '0')).join('')))
          .catch(e => done('error ' + e));""", href)
    assert digest == hashlib.sha256((folder / "call.pcap").read_bytes()).hexdigest()
    sign_out(d)
    # 5. a listener sees only calls of its number
    sign_in(d, server, "lee")
    seen = _call_ids(d)
    every = {json.loads(p.read_text())["id"]: json.loads(p.read_text()) for p in web_lab.out.rglob("call.json")}
    assert seen == {i for i, m in every.items() if "10001" in (m["from"] + m["to"])} and seen
    d.get(f"{server}/calls/{rid}")
    assert "not among the numbers you may see" in d.page_source
    d.save_screenshot(str(shots / "4-listener.png"))
    sign_out(d)
    # 6. the auditor finds every step
    sign_in(d, server, "aud")
    assert "Hash chain verified" in d.find_element(By.ID, "chain").text
    entries = [(e.get_attribute("data-actor"), e.get_attribute("data-action"), e.get_attribute("data-recording"))
               for e in d.find_elements(By.CSS_SELECTOR, "tr.entry")]
    for step in (("ada", "sign-in", ""), ("ada", "search", ""), ("ada", "view", rid), ("ada", "play", rid),
                 ("ada", "download", rid), ("ada", "sign-out", ""), ("lee", "sign-in", ""),
                 ("aud", "sign-in", "")):
        assert step in entries, step
    d.save_screenshot(str(shots / "5-audit.png"))
