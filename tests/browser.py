"""A notebook in a real browser: JupyterLab, driven by Playwright with Debian's Chromium.

    python tests/browser.py notebooks/03_fine_tuning.ipynb                 # run it, screenshot the end
    python tests/browser.py NOTEBOOK --moment 'form=.widget-slider' \\
        --moment 'loss=.jp-CodeCell:has-text("Dashboard") img' --changing loss

`run_in_browser(notebook, moments)` copies the notebook's folder to a temporary one, starts
`jupyter lab` there on a free localhost port, opens the notebook in Chromium, clicks Run > Run
All Cells and takes a screenshot at each `Moment`, then once every cell has run. It returns what
the page showed (`Seen`): each output's text, pictures and widgets, and the errors. `Lab` does
the same for several notebooks of one folder, starting JupyterLab once.

The kernels run offline, as `make lessons` runs the lessons: DREAMLAB_OFFLINE=1, and
DREAMLAB_OUTPUT in the temporary folder. Playwright's own browser download is not reachable here:
Chromium comes from Debian (`apt-get install chromium`), and Playwright only drives it.
"""

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without the networking flags Chromium calls Google's services at start, which this closed network
# refuses; --no-sandbox because CI runs as root
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DONE = "every cell has run"  # a Moment's wait_for: Run All has finished (or stopped at an error)
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show: what the page looks in

# JupyterLab's settings for the run, in a settings folder of its own: start the notebook's kernel
# without asking, keep every cell in the page (by default cells far off screen are left out, and
# their outputs could not be read), and no pop-up asking about Jupyter's news over the screenshots
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True, "windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
# An error output (a traceback, or a DreamlabError's one line) is stderr text with such a line
ERROR_LINE = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b.*:", re.M)


@dataclass
class Moment:
    """A screenshot, `name`.png, taken when the Playwright selector `wait_for` (CSS, or text=...)
    first matches a visible element, scrolled into view; or when every cell has run (DONE).

    changing=True: what `wait_for` matches (a live picture, a status line) should be updated in
    place while the cell runs; a second screenshot, `name`-later.png, is taken once it changed."""
    name: str
    wait_for: str = DONE
    changing: bool = False


@dataclass
class Output:
    cell: int  # the cell's index in the notebook, markdown cells counted
    mime: str  # "application/vnd.jupyter.stdout", "image/png"... ("" for a widget)
    text: str
    images: int


@dataclass
class Seen:
    """What the page showed once every cell had run."""
    outputs: list[Output]
    widgets: int  # ipywidgets drawn as widgets (not as their text, as where widgets do not work)
    updated: dict[str, bool]  # each changing Moment: did what it matched change, in place?
    screenshots: list[Path]
    seconds: dict[str, float]  # "notebook open", "run" (run_in_browser: "lab start", "total" too)
    errors: list[str] = field(init=False)
    images: int = field(init=False)

    def __post_init__(self):
        self.errors = [f"cell {o.cell}: {o.text.strip()}" for o in self.outputs
                       if o.mime == "application/vnd.jupyter.stderr" and ERROR_LINE.search(o.text)]
        self.images = sum(o.images for o in self.outputs)


def run_in_browser(notebook: Path, moments: list[Moment] = (), out_dir: Path | None = None,
                   timeout: float = 600, change_within: float = 10) -> Seen:
    """Runs `notebook` in JupyterLab in Chromium, in a temporary copy of its folder; screenshots in
    out_dir (default build/browser/<notebook's name>). Its seconds add "lab start" and "total"."""
    notebook, start = Path(notebook).resolve(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dreamlab-notebooks-") as tmp:
        folder = Path(tmp) / notebook.parent.name
        shutil.copytree(notebook.parent, folder, ignore=only_files_and_folders)
        with Lab(folder) as lab:
            seen = lab.run(notebook.name, moments, out_dir, timeout, change_within)
    seen.seconds = {"lab start": lab.start_seconds, **seen.seconds,
                    "total": round(time.perf_counter() - start, 1)}
    return seen


class Lab:
    """`jupyter lab` serving `folder`, and a headless Chromium to look at it: notebooks in the
    folder run one after another with `lab.run(name, moments)`, the server started only once.

        with Lab(folder) as lab:
            seen = lab.run("03_fine_tuning.ipynb", [Moment("end")])
    """

    def __init__(self, folder: Path, viewport: tuple[int, int] = (1280, 900)):
        self.folder, self.viewport = Path(folder), viewport

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise FileNotFoundError(f"no Chromium at {CHROMIUM}: apt-get install chromium "
                                    "(or set CHROMIUM to its path)")
        with contextlib.ExitStack() as stack:  # what has started is stopped if the rest fails
            start = time.perf_counter()
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dreamlab-lab-")))
            self.url, self.token = stack.enter_context(jupyter_lab(self.folder, tmp))
            self.start_seconds = round(time.perf_counter() - start, 1)
            playwright = stack.enter_context(sync_playwright())
            # Playwright gives the browser a fresh profile in a temporary folder of its own
            self.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            stack.callback(self.browser.close)
            self.stop = stack.pop_all().close
        return self

    def __exit__(self, *exception):
        self.stop()

    def run(self, notebook: str, moments: list[Moment] = (), out_dir: Path | None = None,
            timeout: float = 600, change_within: float = 10) -> Seen:
        """Opens the folder's `notebook` (its outputs cleared first), clicks Run > Run All Cells and
        takes the moments' screenshots, then one of the end (unless a moment waits for DONE) in
        out_dir (default build/browser/<notebook's name>). `timeout`: seconds for all of it;
        `change_within`: seconds that what a changing Moment matched gets to change."""
        out_dir = Path(out_dir or ROOT / "build" / "browser" / Path(notebook).stem)
        out_dir.mkdir(parents=True, exist_ok=True)
        without_outputs(self.folder / notebook)
        seconds, shots, updated = {}, [], {}
        deadline = time.perf_counter() + timeout
        page = self.browser.new_page(viewport=dict(zip(("width", "height"), self.viewport)))
        page.set_default_timeout(120_000)  # (ms) loading JupyterLab on a busy machine takes a while
        try:
            t = time.perf_counter()
            # reset: a workspace of the notebook alone, not the one the last notebook left open
            page.goto(f"{self.url}/lab/tree/{notebook}?reset&token={self.token}")
            wait_until(page, lambda: page.locator(".jp-StatusBar-TextItem", has_text="| Idle").count(),
                       deadline, "the notebook's kernel to start", out_dir)
            seconds["notebook open"] = time.perf_counter() - t
            page.keyboard.press("Control+b")  # fold the file browser away: more of the notebook shows
            t = time.perf_counter()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            if not any(moment.wait_for == DONE for moment in moments):
                moments = [*moments, Moment("end")]
            for moment in moments:
                wait_for_moment(page, moment, deadline, out_dir)
                before = matched(page, moment)  # before the screenshot: a live picture may not wait
                shots.append(screenshot(page, out_dir / f"{moment.name}.png"))
                if moment.changing:
                    updated[moment.name] = wait_for_change(page, moment, before, change_within)
                    shots.append(screenshot(page, out_dir / f"{moment.name}-later.png"))
            wait_until(page, lambda: all_ran(page), deadline, "every cell to run", out_dir)
            seconds["run"] = time.perf_counter() - t
            outputs = [Output(**o) for o in page.evaluate(READ_OUTPUTS, NOTEBOOK)]
            widgets = page.locator(f"{NOTEBOOK} .jp-OutputArea-output .jupyter-widgets").count()
        finally:
            page.close()
            self.shut_down_kernels()  # the next notebook starts in a fresh kernel, as in make lessons
        return Seen(outputs, widgets, updated, shots, {k: round(v, 1) for k, v in seconds.items()})

    def shut_down_kernels(self) -> None:
        for session in json.loads(api(self.url, self.token, "/api/sessions")):
            api(self.url, self.token, f"/api/sessions/{session['id']}", method="DELETE")


def only_files_and_folders(folder: str, names: list[str]) -> list[str]:
    """What copytree leaves out: sockets (a kernel running beside the notebooks has some there) and
    Jupyter's checkpoints."""
    return [name for name in names if name == ".ipynb_checkpoints"
            or not (os.path.isfile(os.path.join(folder, name)) or os.path.isdir(os.path.join(folder, name)))]


def without_outputs(path: Path) -> None:
    """The copy starts as a learner's would: no outputs, no execution counts (whatever the page
    shows then comes from this run)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)


@contextlib.contextmanager
def jupyter_lab(folder: Path, tmp: Path):
    """`jupyter lab` serving `folder`, with its own settings, runtime and config folders in tmp;
    yields its address and token. Shut down through its API, kernels included."""
    settings = tmp / "lab-settings"
    for plugin, values in LAB_SETTINGS.items():
        file = settings / f"{plugin}.jupyterlab-settings"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(values))
    env = dict(os.environ, DREAMLAB_OFFLINE="1", DREAMLAB_OUTPUT=str(tmp / "output"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
               JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"))
    with socket.socket() as s:  # a free port: the system picks one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, token = f"http://127.0.0.1:{port}", secrets.token_hex(16)
    log = tmp / "lab.log"
    with open(log, "w") as log_file:
        lab = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={folder}", "--LabApp.extension_manager=readonly",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_server(url, token, lab, log)
        yield url, token
    finally:
        with contextlib.suppress(OSError):
            api(url, token, "/api/shutdown", method="POST")
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()


def api(url: str, token: str, path: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(url + path, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def wait_for_server(url: str, token: str, lab: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if lab.poll() is not None:
            raise RuntimeError(f"jupyter lab stopped (exit {lab.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            api(url, token, "/api/status")
            return
        time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


# Every cell has run when no cell waits or runs (their prompt shows [*]), at least one has a
# number, and the kernel is idle. Run All that stops at an error clears the prompts of the rest.
ALL_RAN = """notebook => {
    const panel = document.querySelector(notebook);
    if (panel === null) return false;
    const prompts = [...panel.querySelectorAll('.jp-InputPrompt')].map(p => p.textContent);
    const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
    return !prompts.some(p => p.includes('*')) && prompts.some(p => /\\d/.test(p))
        && indicator !== null && indicator.dataset.status === 'idle';
}"""

# The outputs, each with its cell's index. Outputs inside a widget (an Output widget) are outputs
# too; the widget's own output area, which holds them, is left out so that none counts twice.
READ_OUTPUTS = """notebook => [...document.querySelectorAll(notebook + ' .jp-Cell')].flatMap((cell, i) =>
    [...cell.querySelectorAll('.jp-OutputArea-output')]
        .filter(o => o.querySelector('.jp-OutputArea-output') === null)
        .map(o => ({cell: i, mime: o.dataset.mimeType || '', text: o.innerText,
                    images: o.querySelectorAll('img').length})))"""


def all_ran(page) -> bool:
    return page.evaluate(ALL_RAN, NOTEBOOK)


def wait_until(page, condition, deadline: float, what: str, out_dir: Path) -> None:
    """Polls `condition` until the deadline; on a timeout, a screenshot shows where the page stood."""
    while not condition():
        if time.perf_counter() > deadline:
            shot = screenshot(page, out_dir / "timeout.png")
            raise TimeoutError(f"waited in vain for {what}; the page then: {shot}")
        time.sleep(0.25)


def screenshot(page, path: Path) -> Path:
    page.screenshot(path=path)
    return path


def wait_for_moment(page, moment: Moment, deadline: float, out_dir: Path) -> None:
    """Waits for the moment, then scrolls what it waited for into view."""
    if moment.wait_for == DONE:
        wait_until(page, lambda: all_ran(page), deadline, "every cell to run", out_dir)
        target = page.locator(f"{NOTEBOOK} .jp-OutputArea-output").last  # the final picture, or error
    else:
        target = page.locator(NOTEBOOK).locator(moment.wait_for).first

        def seen():
            if target.is_visible():
                return True
            if all_ran(page):  # a run that ended (or stopped at an error) will not show it any more
                shot = screenshot(page, out_dir / f"{moment.name}-missing.png")
                raise AssertionError(f"the run ended without showing {moment.wait_for!r}; the page: {shot}")
            return False

        wait_until(page, seen, deadline, f"{moment.wait_for!r} ({moment.name})", out_dir)
    if target.count():
        target.scroll_into_view_if_needed()


def matched(page, moment: Moment) -> list[str]:
    """The HTML of what the moment's selector matches (a picture's holds its src, its pixels)."""
    if moment.wait_for == DONE:
        return []
    found = page.locator(NOTEBOOK).locator(moment.wait_for)
    return found.evaluate_all("elements => elements.map(e => e.outerHTML)")


def wait_for_change(page, moment: Moment, before: list[str], within: float) -> bool:
    """Waits up to `within` seconds for what the moment's selector matched to change. Updated in
    place: changed, and as many elements as before (a new picture below the old one is no live update)."""
    give_up, now = time.perf_counter() + within, matched(page, moment)
    while now == before and time.perf_counter() < give_up:
        time.sleep(0.1)
        now = matched(page, moment)
    return now != before and len(now) == len(before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--moment", action="append", default=[], metavar="NAME=SELECTOR",
                        help="a screenshot NAME.png when SELECTOR shows (repeatable, in order)")
    parser.add_argument("--changing", action="append", default=[], metavar="NAME",
                        help="what that moment matched should update in place")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    moments = [Moment(name, selector, name in args.changing)
               for name, selector in (m.split("=", 1) for m in args.moment)]
    seen = run_in_browser(args.notebook, moments, args.out, timeout=args.timeout)
    print(f"seconds: {seen.seconds}")
    print(f"{len(seen.outputs)} outputs, {seen.images} pictures, {seen.widgets} widgets")
    for name, ok in seen.updated.items():
        print(f"{name}: {'updated in place' if ok else 'NOT updated in place'}")
    print("screenshots:", *seen.screenshots, sep="\n  ")
    print("errors:", *(seen.errors or ["none"]), sep="\n  ")
    return 1 if seen.errors or not all(seen.updated.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
