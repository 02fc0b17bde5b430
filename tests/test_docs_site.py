"""The docs site builds with `mkdocs build --strict` and its math renders offline in Chromium.

The build goes to a temporary folder. The rendering test serves that folder on 127.0.0.1 from a
thread, loads a derivation page in Debian's headless Chromium and checks the DOM after MathJax
has run. A screenshot of the page is kept in test-artifacts/.
"""

import functools
import html.parser
import http.server
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
RENDERED_PAGE = "theory/logit/"
BUILD_TIMEOUT_S = 300
BROWSER_TIMEOUT_S = 120


def missing_docs_tools() -> str | None:
    """Return why the docs cannot be built here, or None when they can."""
    for module, package in [
        ("mkdocs", "mkdocs"),
        ("material", "mkdocs-material"),
        ("mkdocstrings_handlers.python", "mkdocstrings-python"),
        ("pymdownx", "pymdown-extensions"),
        ("mathjax", "django-static-mathjax"),
    ]:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{package} is not installed; install the docs extra: pip install -e '.[docs]'"
    return None


def find_chromium() -> str | None:
    """Return the Chromium executable, preferring the binary behind Debian's wrapper script.

    Debian's /usr/bin/chromium wrapper adds flags and API keys from /etc/chromium.d that make the
    browser contact Google services; the binary itself runs without them.
    """
    binary = pathlib.Path("/usr/lib/chromium/chromium")
    if binary.is_file() and os.access(binary, os.X_OK):
        return str(binary)
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    reason = missing_docs_tools()
    if reason:
        pytest.skip(reason)

    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return site


class AssetCollector(html.parser.HTMLParser):
    """Collects the URLs of the scripts, stylesheets and images that a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in ("script", "img") and attributes.get("src"):
            self.urls.append(attributes["src"])
        if tag == "link" and attributes.get("rel") in ("stylesheet", "icon", "preload"):
            self.urls.append(attributes["href"])


def test_site_builds_strict(built_site):
    for page in ["index.html", "theory/dequantize/index.html", "reference/api/index.html"]:
        assert (built_site / page).is_file(), page
    assert (built_site / "assets/mathjax/tex-chtml.js").is_file()
    fonts = list((built_site / "assets/mathjax/output/chtml/fonts/woff-v2").glob("*.woff"))
    assert len(fonts) > 10
    # The hook and the measurement script are for the build and the tests, not the site.
    assert not (built_site / "hooks").exists()
    assert not (built_site / "scripts").exists()


def test_site_loads_nothing_from_other_hosts(built_site):
    pages = sorted(built_site.rglob("*.html"))
    assert len(pages) >= 10

    for page in pages:
        collector = AssetCollector()
        collector.feed(page.read_text())
        for url in collector.urls:
            parsed = urllib.parse.urlparse(url)
            assert not parsed.scheme, f"{page} loads {url}"
            assert not parsed.netloc, f"{page} loads {url}"


def test_api_page_lists_public_objects(built_site):
    text = (built_site / "reference/api/index.html").read_text()

    for name in ["Dequantize", "Scale", "Logit", "Compose", "dequantization_pipeline", "quantize"]:
        assert f'id="flowext.{name}"' in text, name


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def site_url(built_site):
    handler = functools.partial(QuietHandler, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_chromium(chromium: str, profile: pathlib.Path, url: str, *action: str) -> str:
    """Run headless Chromium on `url` with a fresh profile and return its standard output."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # Resolve no host name at all, so that nothing can leave the machine: the page under
        # test lives on 127.0.0.1.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--disable-features=AutofillServerCommunication,NetworkTimeServiceQuerying,"
        "OptimizationHints,MediaRouter,Translate",
        "--disable-extensions",
        # Virtual time lets MathJax finish typesetting before the DOM or screenshot is taken.
        "--virtual-time-budget=20000",
        "--window-size=1280,2400",
        *action,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert result.returncode == 0, f"chromium failed:\n{result.stderr[-3000:]}"
    return result.stdout


class TextCollector(html.parser.HTMLParser):
    """Collects the text of a page outside scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skipping += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skipping -= 1

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def requests_by_page(net_log: pathlib.Path, origin: str) -> list[str]:
    """Return the URLs that the page itself requested, from a Chromium NetLog file.

    Requests that the browser starts on its own have no origin as initiator; those are left
    out. They cannot resolve any host name under the resolver rules above.
    """
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] == start_job and params.get("initiator", "").startswith(origin):
            urls.append(params["url"])
    return urls


def test_math_renders_in_chromium(site_url, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed; on Debian: apt-get install -y chromium")

    url = site_url + RENDERED_PAGE
    net_log = tmp_path / "net-log.json"
    dom = run_chromium(
        chromium, tmp_path / "profile-dom", url, f"--log-net-log={net_log}", "--dump-dom"
    )

    math_elements = dom.count('class="arithmatex"')
    rendered = dom.count("<mjx-container")
    assert math_elements > 20
    assert rendered >= math_elements, f"{rendered} of {math_elements} math elements rendered"

    collector = TextCollector()
    collector.feed(dom)
    text = "".join(collector.parts)
    assert "$$" not in text
    assert "\\[" not in text
    assert "\\(" not in text

    origin = site_url.rstrip("/")
    requested = requests_by_page(net_log, origin)
    assert any(u.endswith("/assets/mathjax/tex-chtml.js") for u in requested)
    assert any(u.endswith(".woff") for u in requested), "no MathJax font was loaded"
    elsewhere = [u for u in requested if not u.startswith(origin + "/")]
    assert not elsewhere, f"the page requested other hosts: {elsewhere}"

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "docs-logit-page.png"
    screenshot.unlink(missing_ok=True)
    run_chromium(chromium, tmp_path / "profile-screenshot", url, f"--screenshot={screenshot}")
    assert screenshot.is_file()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
