"""ComfyUI's own web frontend in headless Chromium (Debian's ``chromium`` driven by the pip
``playwright`` package; never a Playwright browser download). ``scripts/setup_browser.sh``
installs both.

    with ComfyFrontend.open(server.url) as frontend:       # boots the page once
        report = frontend.drop_workflow("psg_edit.json", text)   # as a user dropping the file
        assert not report.problems()
        frontend.screenshot(path)

Only 127.0.0.1 is reachable from the page: every other request is aborted (and listed in
``external_requests``), so the frontend's telemetry, release notes and fonts never leave the machine.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psg_cli.errors import RetryableError
from psg_cli.server_backend import ServerBackend

logger = logging.getLogger(__name__)

CHROMIUM_ENV = "PSG_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
BOOT_TIMEOUT_S = 300.0
"""Parsing the frontend's ~10 MB of JavaScript on two busy cores: generous on purpose."""
LOAD_TIMEOUT_S = 120.0
VIEWPORT = {"width": 1600, "height": 1000}
FIRST_RUN_SETTINGS = {
    "Comfy.TutorialCompleted": True,  # else a first visit opens the template browser over the canvas
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # draw titles and widgets at any zoom (screenshots)
    # the test server has none of the checkpoints the templates name: their download offer (from the
    # loaders' properties.models) is checked on its own (test_host_frontend_offers_missing_checkpoints)
    "Comfy.Workflow.ShowMissingModelsWarning": False,
}
SETUP_HINT = "run `bash scripts/setup_browser.sh` (Debian chromium + pip playwright, no browser download)"

# Wraps app.loadGraphData once so Python can wait for the load a drop starts: the JSON branch of
# app.handleFile reads the file with a FileReader, so the drop event itself returns early.
_INSTRUMENT_JS = """() => {
  const app = window.app;
  if (app.__psgLoads !== undefined) return;
  app.__psgLoads = 0;
  app.__psgLoadErrors = [];
  const original = app.loadGraphData.bind(app);
  app.loadGraphData = async (...args) => {
    try { return await original(...args); }
    catch (error) { app.__psgLoadErrors.push(String(error && error.stack || error)); throw error; }
    finally { app.__psgLoads += 1; }
  };
}"""

_DROP_JS = """([name, text]) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([text], name, { type: "application/json" }));
  const target = window.app.canvasEl;
  const rect = target.getBoundingClientRect();
  const at = { clientX: rect.x + rect.width / 2, clientY: rect.y + rect.height / 2 };
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(
      new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true, ...at }));
  }
  return window.app.__psgLoads;
}"""

_INSPECT_JS = """async () => {
  const app = window.app;
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const registered = window.LiteGraph.registered_node_types;
  const nodes = app.graph.nodes.map((n) => ({ id: n.id, type: n.type, registered: n.type in registered,
                                             has_errors: !!n.has_errors }));
  let prompt = null, promptError = null;
  try { prompt = (await app.graphToPrompt()).output; } catch (e) { promptError = String(e && e.stack || e); }
  return {
    nodes,
    graph: app.graph.serialize(),
    prompt,
    prompt_error: promptError,
    load_errors: app.__psgLoadErrors.splice(0),
    dialogs: [...document.querySelectorAll(".p-dialog")].filter(visible).map((d) => d.innerText.trim()),
    toasts: [...document.querySelectorAll(".p-toast-message")].filter(visible)
      .filter((t) => !t.className.includes("p-toast-message-info")
        && !t.className.includes("p-toast-message-success"))
      .map((t) => t.innerText.trim()),
  };
}"""

_DISMISS_JS = """() => {
  document.querySelectorAll(".p-toast-message .p-toast-close-button").forEach((b) => b.click());
  document.querySelectorAll(".p-dialog .p-dialog-close-button").forEach((b) => b.click());
}"""

_CLEAN_VIEW_JS = """async () => {
  const settings = window.app.extensionManager.setting;
  await settings.set("Comfy.Minimap.Visible", false);
  await settings.set("Comfy.Graph.CanvasMenu", false);
  if (!document.body.dataset.psgFocus) {
    await window.app.extensionManager.command.execute("Workspace.ToggleFocusMode");
    document.body.dataset.psgFocus = "1";
  }
  window.app.canvas.show_info = false;
  await new Promise((resolve) => setTimeout(resolve, 100));  // let the canvas take the freed space
  window.app.canvas.resize();
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
}"""

# Zooms so every node (boundingRect includes the title bar) fills ``zoom`` of the canvas, redraws,
# and returns the graph's box in CSS pixels of the page.
_FIT_JS = """async (zoom) => {
  const app = window.app, ds = app.canvas.ds;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of app.graph.nodes) {
    const [x, y, w, h] = n.boundingRect;
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
  }
  ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], { zoom });
  app.graph.setDirtyCanvas(true, true);
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  const rect = app.canvasEl.getBoundingClientRect();
  return { x: rect.x + (x0 + ds.offset[0]) * ds.scale, y: rect.y + (y0 + ds.offset[1]) * ds.scale,
           width: (x1 - x0) * ds.scale, height: (y1 - y0) * ds.scale };
}"""


def find_chromium() -> Path | None:
    """$PSG_CHROMIUM, else Debian's /usr/bin/chromium, else `chromium` on PATH."""
    for candidate in (os.environ.get(CHROMIUM_ENV), DEFAULT_CHROMIUM, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def unavailable_reason() -> str | None:
    """Why the frontend cannot be driven here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the pip package `playwright` is not installed: {SETUP_HINT}"
    if find_chromium() is None:
        return f"no Chromium at ${CHROMIUM_ENV} or {DEFAULT_CHROMIUM}: {SETUP_HINT}"
    return None


@dataclass
class BrowserMessage:
    """A console error or an uncaught page error, with where it came from."""

    kind: str
    text: str
    where: str = ""

    def __str__(self) -> str:
        return f"[{self.kind}] {self.text}" + (f" ({self.where})" if self.where else "")


@dataclass
class LoadReport:
    """What the frontend made of one dropped workflow."""

    name: str
    nodes: list[dict[str, Any]]
    graph: dict[str, Any]
    prompt: dict[str, Any] | None
    prompt_error: str | None
    dialogs: list[str]
    toasts: list[str]
    errors: list[BrowserMessage] = field(default_factory=list)

    @property
    def unregistered(self) -> list[str]:
        return sorted({n["type"] for n in self.nodes if not n["registered"]})

    def problems(self) -> list[str]:
        """Everything a user would see go wrong: dialogs (missing nodes, load errors), error
        toasts, unregistered or errored nodes, console and page errors, graphToPrompt failing."""
        found = [f"dialog: {text[:400]}" for text in self.dialogs]
        found += [f"toast: {text[:400]}" for text in self.toasts]
        if self.unregistered:
            found.append(f"node types the frontend does not know: {self.unregistered}")
        found += [f"node {n['id']} ({n['type']}) has errors" for n in self.nodes if n["has_errors"]]
        found += [str(e) for e in self.errors]
        if self.prompt_error:
            found.append(f"graphToPrompt failed: {self.prompt_error}")
        return found


class ComfyFrontend:
    """One headless Chromium page on a ComfyUI server's frontend."""

    def __init__(self, url: str, page: Any) -> None:
        self.url = url.rstrip("/")
        self.page = page
        self.messages: list[BrowserMessage] = []
        self.external_requests: list[str] = []
        self.boot_messages: list[BrowserMessage] = []
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.route("**/*", self._route)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextmanager
    def open(cls, url: str, *, boot_timeout_s: float = BOOT_TIMEOUT_S) -> Iterator[ComfyFrontend]:
        """Launch Chromium, store first-run settings on the server, boot the frontend."""
        from playwright.sync_api import sync_playwright

        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        _store_settings(url, FIRST_RUN_SETTINGS)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(find_chromium()), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                frontend = cls(url, page)
                frontend.boot(boot_timeout_s)
                yield frontend
            finally:
                browser.close()

    def boot(self, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Open the page and wait until the app, its canvas and the node definitions are ready."""
        logger.info("booting the ComfyUI frontend at %s", self.url)
        self.page.goto(self.url, timeout=timeout_s * 1000, wait_until="load")
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvasEl && window.app.extensionManager"
            " && window.LiteGraph && Object.keys(window.LiteGraph.registered_node_types).length > 0",
            timeout=timeout_s * 1000,
        )
        self.page.evaluate(_INSTRUMENT_JS)
        self.page.evaluate(_DISMISS_JS)
        self.boot_messages, self.messages = self.messages, []
        logger.info("frontend booted (%d console errors during boot)", len(self.boot_messages))

    # ------------------------------------------------------------------ actions

    def registered_node_types(self) -> list[str]:
        return sorted(self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))

    def drop_workflow(self, filename: str, text: str, *, timeout_s: float = LOAD_TIMEOUT_S) -> LoadReport:
        """Drop ``text`` as a file named ``filename`` on the canvas, wait for the load, inspect it."""
        self.page.evaluate(_DISMISS_JS)
        self.messages = []
        before = self.page.evaluate(_DROP_JS, [filename, text])
        self.page.wait_for_function("n => window.app.__psgLoads > n", arg=before, timeout=timeout_s * 1000)
        state = self.page.evaluate(_INSPECT_JS)
        errors = list(self.messages)
        errors += [BrowserMessage("loadGraphData", text) for text in state["load_errors"]]
        return LoadReport(filename, state["nodes"], state["graph"], state["prompt"], state["prompt_error"],
                          state["dialogs"], state["toasts"], errors)

    def set_setting(self, name: str, value: Any) -> None:
        """Change one frontend setting the way its settings dialog does."""
        self.page.evaluate("([n, v]) => window.app.extensionManager.setting.set(n, v)", [name, value])

    def fit_view(self, zoom: float = 0.95) -> dict[str, float]:
        """Zoom the canvas so the whole graph fills ``zoom`` of it; the graph's box on the page."""
        return self.page.evaluate(_FIT_JS, zoom)

    def screenshot(self, path: Path, *, canvas_only: bool = False, quality: int = 85) -> Path:
        """Save the page (or just the graph canvas) as PNG or JPEG, by ``path``'s suffix."""
        path.parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {"path": str(path)}
        if path.suffix.lower() in (".jpg", ".jpeg"):
            options.update(type="jpeg", quality=quality)
        target = self.page.locator("#graph-canvas") if canvas_only else self.page
        target.screenshot(**options)
        return path

    def graph_thumbnail(self, path: Path, *, width: int = 768, padding: int = 16, quality: int = 88) -> Path:
        """A JPEG of just the graph as the frontend draws it (menus, minimap and stats hidden,
        text drawn at every zoom), cropped to the nodes and scaled to ``width`` pixels."""
        import io

        from PIL import Image

        self.page.evaluate(_CLEAN_VIEW_JS)
        box = self.fit_view()
        view = self.page.viewport_size
        clip = {"x": max(0.0, box["x"] - padding), "y": max(0.0, box["y"] - padding)}
        clip["width"] = min(view["width"] - clip["x"], box["width"] + 2 * padding)
        clip["height"] = min(view["height"] - clip["y"], box["height"] + 2 * padding)
        with Image.open(io.BytesIO(self.page.screenshot(clip=clip))) as shot:
            image = shot.convert("RGB")
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=quality, optimize=True)
        return path

    # ------------------------------------------------------------------ listeners

    def _on_console(self, message: Any) -> None:
        where = message.location.get("url", "")
        if where.startswith(("http://", "https://")) and not where.startswith(self.url):
            return  # a request this sandbox aborted (see external_requests), not a frontend error
        if message.type == "error":
            self.messages.append(BrowserMessage("console", message.text, where))

    def _on_page_error(self, error: Any) -> None:
        frames = (error.stack or "").splitlines()[1:2]
        self.messages.append(BrowserMessage("pageerror", str(error), frames[0].strip() if frames else ""))

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith((self.url, "data:", "blob:")):
            route.continue_()
        else:
            self.external_requests.append(url)
            route.abort()


def ensure_input_image(url: str, name: str, photo: Path) -> bool:
    """Upload ``photo`` as input/``name`` unless the server already has such a file (a shipped
    workflow's LoadImage refers to it; without it the node shows a broken preview). True if uploaded."""
    client = ServerBackend(url, http_timeout=30.0)
    try:
        client.fetch({"filename": name, "type": "input"})
        return False
    except RetryableError:  # not there (404)
        pass
    client.upload_file(photo, name, overwrite=False)
    logger.info("uploaded %s as input/%s", photo, name)
    return True


def _store_settings(url: str, settings: dict[str, Any]) -> None:
    """POST /api/settings: the frontend reads them at boot (they live in the server's user dir)."""
    ServerBackend(url, http_timeout=30.0).post_json("/api/settings", settings)
