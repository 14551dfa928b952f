"""A real browser client against a 3-node cluster: Converse.js (npm) in headless
Chromium (Debian), once over WebSocket and once over BOSH, logs in, chats with a
slixmpp user on another node and shares a file through XEP-0363.

The page is served from its own origin (a local static server), the cluster sits
behind a round-robin load balancer without sticky sessions (tests/web_proxy.py), and
`[http] public_url` points at the balancer, so BOSH requests, upload PUTs and GETs are
spread over the nodes. The test asserts what the page shows; a screenshot of each run
is kept next to the test's temporary files (and copied to $RAFTXMPP_SCREENSHOTS).
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import shutil
import struct
import threading
import urllib.request
import zlib
from pathlib import Path

import pytest

from tests import browser_setup
from tests.harness import Cluster, free_ports, wait_for
from tests.web_proxy import RoundRobinProxy
from tests.xmpp_client import Client

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

PASSWORD = "browser-password"
TIMEOUT = 40


@pytest.fixture(scope="module")
def tools():
    try:
        browser, driver = browser_setup.chromium()
        dist = browser_setup.converse_dist()
    except browser_setup.SetupError as exc:
        pytest.fail(f"cannot set up the browser test: {exc}")
    return browser, driver, dist


@pytest.fixture(scope="module")
def web(tmp_path_factory, ca_file):
    proxy_port = free_ports(1)[0]
    tls = f'\n[tls]\ncertificate = "{ca_file / "cert.pem"}"\nkey = "{ca_file / "key.pem"}"\n'
    cluster = Cluster(tmp_path_factory.mktemp("browser-cluster"), 3, tls,
                      http_extra=f'public_url = "http://127.0.0.1:{proxy_port}"')
    cluster.start()
    try:
        cluster.leader()
        wait_for(lambda: all(len(n.admin("node.status")["gossip"]) == 3 for n in cluster.nodes),
                 20, "every node to see the others by gossip")
        backends = [n.ports["http"] for n in cluster.nodes]
        with RoundRobinProxy(proxy_port, backends) as proxy:
            yield cluster, proxy
    finally:
        cluster.kill_all()


@pytest.fixture(scope="module")
def page_server(tools, tmp_path_factory):
    """The test page and Converse.js from an origin of their own."""
    root = tmp_path_factory.mktemp("page")
    shutil.copytree(tools[2], root / "dist")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>raftxmpp web test</title>
<link rel="stylesheet" href="/dist/converse.min.css">
<script type="module" src="/dist/converse.min.js"></script></head>
<body class="converse-fullscreen"><script type="module">
converse.plugins.add('raftxmpp-test', {{
  initialize() {{ window.testApi = this._converse.api; }}
}});
converse.initialize({{
  whitelisted_plugins: ['raftxmpp-test'],
  assets_path: '/dist/',
  view_mode: 'fullscreen',
  {transport},
  jid: '{jid}', password: '{password}', auto_login: true,
  discover_connection_methods: false,
  allow_non_roster_messaging: true,
  play_sounds: false, show_desktop_notifications: false,
  show_images_inline: true,
  loglevel: 'info', i18n: 'en',
}});
</script></body></html>
"""


@pytest.fixture
def driver(tools, tmp_path):
    from selenium import webdriver

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    browser, chromedriver, _ = tools
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in browser_setup.CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=chromedriver)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(TIMEOUT)
    yield driver
    driver.quit()


class BackgroundClient:
    """A slixmpp client in a thread of its own (its own asyncio loop), for a sync test."""

    def __init__(self, jid: str, port: int, ca: Path) -> None:
        self.ready = threading.Event()
        self._args = (jid, PASSWORD, port, ca)
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self.ready.wait(TIMEOUT) or self.client is None:
            raise AssertionError(f"{jid} could not log in")

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.client = Client(*self._args)
        if not await self.client.start():
            self.client = None
        self.ready.set()
        await self.stopping.wait()
        if self.client is not None:
            await self.client.stop()

    def call(self, coro, timeout: float = TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def send(self, to: str, body: str) -> None:
        self.loop.call_soon_threadsafe(
            functools.partial(self.client.send_message, mto=to, mbody=body, mtype="chat"))

    def next_body(self) -> str:
        return str(self.call(self.client.next_message(TIMEOUT))["body"])

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self._thread.join(TIMEOUT)


def png(width: int = 48, height: int = 32) -> bytes:
    """A small valid PNG (a red-blue gradient), so the page can show it inline."""
    rows = b"".join(b"\0" + b"".join(bytes((255 * x // width, 0, 255 * y // height))
                                     for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _text_shown(driver, text: str) -> bool:
    return text in driver.find_element("tag name", "body").text


@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_converse_logs_in_chats_and_shares_a_file(transport, web, page_server, driver,
                                                   ca_file, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    cluster, proxy = web
    root, origin = page_server
    user, contact = f"alice-{transport}", f"bob-{transport}"
    for name in (user, contact):
        cluster.nodes[0].admin("user.add", jid=f"{name}@localhost", password=PASSWORD)
    endpoint = (f"websocket_url: 'ws://127.0.0.1:{proxy.port}/xmpp-websocket'"
                if transport == "websocket"
                else f"bosh_service_url: 'http://127.0.0.1:{proxy.port}/http-bind'")
    (root / f"{transport}.html").write_text(PAGE.format(
        transport=endpoint, jid=f"{user}@localhost", password=PASSWORD))
    before = dict(proxy.requests)
    bob = BackgroundClient(f"{contact}@localhost/slixmpp", cluster.nodes[2].c2s_port,
                           ca_file / "ca.pem")
    wait = WebDriverWait(driver, TIMEOUT)
    screenshot = tmp_path / f"converse-{transport}.png"
    try:
        driver.get(f"{origin}/{transport}.html")
        # Logged in: the control box shows our own name.
        wait.until(lambda d: d.execute_script(
            "return !!(window.testApi && testApi.connection.connected())"))
        wait.until(lambda d: _text_shown(d, user))

        # Chat: open a conversation, type into the page, read the answer on the page.
        driver.execute_script(f"testApi.chats.open('{contact}@localhost', {{}}, true); return true")
        textarea = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "textarea.chat-textarea"))
        textarea.send_keys("hello from the browser", Keys.ENTER)
        assert bob.next_body() == "hello from the browser"
        bob.send(f"{user}@localhost", "hello from slixmpp on node3")
        wait.until(lambda d: _text_shown(d, "hello from slixmpp on node3"))

        # Share a file: the page asks upload.localhost for a slot, PUTs, and sends the URL.
        image = tmp_path / "picture.png"
        image.write_bytes(png())
        driver.find_element(By.CSS_SELECTOR, "input.fileupload").send_keys(str(image))
        url = bob.next_body()
        assert url.startswith(f"http://127.0.0.1:{proxy.port}/upload/") and "picture.png" in url
        for node in cluster.nodes:  # every node serves it (the balancer's URL, rewritten)
            direct = url.replace(f":{proxy.port}/", f":{node.ports['http']}/")
            with urllib.request.urlopen(direct, timeout=TIMEOUT) as reply:
                assert reply.read() == image.read_bytes()
        wait.until(lambda d: any(img.get_attribute("src") == url and d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img)
            for img in d.find_elements(By.CSS_SELECTOR, ".chat-msg img")))
    finally:
        driver.save_screenshot(str(screenshot))
        console = "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser"))
        (tmp_path / f"console-{transport}.log").write_text(console)
        if os.environ.get("RAFTXMPP_SCREENSHOTS"):
            shutil.copy(screenshot, Path(os.environ["RAFTXMPP_SCREENSHOTS"]) / screenshot.name)
        bob.stop()
    spread = {port: proxy.requests[port] - before.get(port, 0) for port in proxy.backends}
    assert all(count > 0 for count in spread.values()), spread
