"""The Colab rehearsal: run the lessons as a new Colab user would, here on the CPU.

On Colab every notebook gets a machine of its own: /content as the working directory, a Python
with torch, diffusers and transformers preinstalled, `google.colab`, a GPU; the lesson's second
cell installs the course from GitHub. Here each lesson gets a `Machine` of the same shape:

    <machine>/content    the kernel's working directory, on its sys.path; it holds a clone of
                         the course (a folder named like the repository, as an old install
                         cell left there), so that an install `import dreamlab` cannot see
                         past would fail
    <machine>/python     a fresh venv; a .pth file lends it this test run's own site-packages
                         (torch, diffusers, ipykernel, pip... but not dreamlab: see
                         `new_machine`) as "what Colab preinstalls", another puts the
                         google.colab stand-in (tests/colab_standin) on its path
    <machine>/ipython    the kernel's IPython profile: it imports google.colab at start, as
                         Colab's kernel does

What outlives the machines is the `Course`, the world outside them:

    github/<owner>/<name>  "GitHub": this checkout's files as they are now, one commit on
                           branch main; the install cell's https://github.com/<owner>/<name>
                           is pointed here
    hf/hub                 "the Hub": SD 1.5's id, holding a micro random-weight SD of SD 1.5's
                           classes, and DINO's and CLIP's ids (lesson 4's metrics), tiny random
                           models of their classes (read with HF_HUB_OFFLINE=1, through
                           huggingface_hub's cache)
    drive                  the learner's Google Drive (MyDrive/), which google.colab.drive mounts
    uploads                the photos the learner picks when files.upload() asks

Only the model's size and the device differ from Colab: the kernels run with DREAMLAB_OFFLINE=0
(the lessons' GPU branch, taken without a GPU) and DREAMLAB_DEVICE=cpu. The lessons run as
published, but for the install cell's address, /content wherever a cell names it (the machine's),
and the Colab form fields a learner would set.
"""

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent  # the checkout
STANDIN = Path(__file__).resolve().parent / "colab_standin"  # holds google/colab/
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
UPLOAD_LIMIT = 2 * 1024 * 1024  # from this size on the stand-in's upload arrives cut short, as Colab's can
# The kernels' threads. The micro model's operations are small: with 2 threads on a 2-core
# machine that anything else keeps busy (another test run, the CI runner), each waits for the
# descheduled thread: a picture took 1.5 to 8 s instead of 0.3 s. Where 2 threads did win, it
# was by a fifth at most. One thread it is.
THREADS = "1"

# The probe, an IPython startup file: it writes down every file of the Hub cache the kernel
# opens. A lesson that opened none loaded no SD 1.5: it took the offline branch.
HUB_PROBE = '''\
import os as _os
import sys as _sys


def _note_hub_files(cache=_os.environ["HF_HUB_CACHE"], log=_os.environ["COLAB_REHEARSAL_HUB_LOG"]):
    seen = set()

    def hook(event, args):
        if event != "open" or isinstance(args[0], int):
            return
        path = _os.fsdecode(args[0])
        if path.startswith(cache) and path not in seen:
            seen.add(path)
            with open(log, "a") as f:
                f.write(path + "\\n")

    _sys.addaudithook(hook)


_note_hub_files()
del _note_hub_files
'''


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout


def course_repository_script():
    """scripts/course_repository.py: it makes the lessons' install cells from pyproject.toml."""
    path = ROOT / "scripts" / "course_repository.py"
    spec = importlib.util.spec_from_file_location("course_repository", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# The world outside the machines

@dataclass
class Course:
    github: Path  # the folder standing for https://github.com
    hub_cache: Path  # HF_HUB_CACHE; HF_HOME is its parent
    drive: Path  # the learner's Drive: holds MyDrive/
    uploads: Path  # the files files.upload() returns
    sd15: Path  # the Hub snapshot that SD 1.5's id resolves to
    repo: str  # owner/name on GitHub, from pyproject.toml
    ref: str  # the branch the install cell installs

    @property
    def repository(self) -> Path:
        return self.github / self.repo

    def on_this_machine(self, source: str) -> str:
        """A cell's source with the course's GitHub address pointed at its copy here: the one
        change the rehearsal makes to what a lesson runs."""
        url = f"https://github.com/{self.repo}"
        if url not in source:
            raise ValueError(f"the cell does not name the course's repository {url}:\n{source}")
        return source.replace(url, f"file://{self.repository}")


def publish_course(github: Path, repo: str, ref: str) -> Path:
    """Put this checkout's files as they are in the working tree (uncommitted edits and new
    files included, ignored ones not) in a new git repository, github/<repo>, with one commit
    on `ref`: what pip clones when a lesson installs the course from GitHub."""
    target = github / repo
    target.mkdir(parents=True)
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in sorted(set(filter(None, listed))):
        source = ROOT / name
        if source.is_file():  # (--cached also lists files deleted in the working tree)
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git(target, "init", "-q", "-b", ref)
    git(target, "add", "-A", "--force")  # every file copied is meant to be there
    git(target, "-c", "user.name=Colab rehearsal", "-c", "user.email=rehearsal@localhost",
        "commit", "-q", "--no-gpg-sign", "-m", "The course as the rehearsal found it")
    return target


def build_hub(hub_cache: Path, model_id: str = SD15) -> Path:
    """The Hub's cache, holding `model_id` as a micro random-weight SD of SD 1.5's classes
    (dreamlab.offline, size "micro"), and the two embedders of lesson 4's metrics as tiny
    random-weight models of their classes (tests/tiny_embedders.py); returns SD's snapshot folder."""
    from tiny_embedders import build_clip, build_dino

    from dreamlab.metrics import CLIP, DINO
    from dreamlab.offline import build_random_model

    publish(hub_cache, DINO, build_dino(hub_cache.parent / "tiny-dino"))
    publish(hub_cache, CLIP, build_clip(hub_cache.parent / "tiny-clip"))
    return publish(hub_cache, model_id, build_random_model(hub_cache.parent / "micro-sd", size="micro"))


def publish(hub_cache: Path, model_id: str, staged: Path) -> Path:
    """Move the folder `staged` into huggingface_hub's cache layout as `model_id`; returns its
    snapshot folder:

        models--<owner>--<name>/refs/main                  the commit `main` points at
        models--<owner>--<name>/snapshots/<commit>/<file>  a link into blobs/, as the Hub's
        models--<owner>--<name>/blobs/<sha256>             the contents
    """
    from huggingface_hub.file_download import repo_folder_name

    files = sorted(p for p in staged.rglob("*") if p.is_file())
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    # the "commit": a hash of the files and their names, so that another model gets another one
    listing = "".join(f"{p.relative_to(staged)} {digest}\n" for p, digest in digests.items())
    commit = hashlib.sha1(listing.encode()).hexdigest()
    repo = hub_cache / repo_folder_name(repo_id=model_id, repo_type="model")
    snapshot = repo / "snapshots" / commit
    for path, digest in digests.items():
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(staged)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.rmtree(staged)
    return snapshot


def pick_photos(uploads: Path, photos: list[Path], oversized: Path) -> Path:
    """The learner's picks for files.upload(): `photos` as they are, and `oversized` saved again as
    an uncompressed PNG of 2 MB or more (a phone's full-quality export), which arrives cut short.
    Returns the oversized file."""
    from PIL import Image

    uploads.mkdir(parents=True)
    for photo in photos:
        shutil.copyfile(photo, uploads / photo.name)
    big = uploads / f"{oversized.stem}-full-quality.png"
    with Image.open(oversized) as image:
        image.convert("RGB").save(big, compress_level=0)
    if big.stat().st_size < UPLOAD_LIMIT:
        raise ValueError(f"{big} is only {big.stat().st_size:,} bytes: pick a larger photo")
    return big


# ---------------------------------------------------------------------------------------------
# A machine

@dataclass
class Machine:
    root: Path
    content: Path  # /content
    python: Path  # Colab's python
    site_packages: Path  # its own site-packages, where pip installs
    ipython_dir: Path
    kernels: Path  # holds the kernelspec "colab"
    seconds: dict = field(default_factory=dict)  # what setting it up cost

    @property
    def hub_log(self) -> Path:
        return self.root / "hub-files.log"

    def hub_files(self) -> list[str]:
        """The files of the Hub cache its kernels opened so far."""
        return self.hub_log.read_text().split() if self.hub_log.exists() else []


def preinstalled_site_packages() -> list[str]:
    """This test run's own site-packages: what the machines get as Colab's preinstalled packages."""
    return sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})


def new_machine(root: Path, course: Course, clone: bool = True) -> Machine:
    """A fresh Colab machine (see the module's docstring); `clone`: with the course's clone in /content.

    The preinstalled packages are this run's site-packages, appended to the venv's sys.path by a
    .pth file. dreamlab is installed there too, but as an editable install, whose finder is
    itself set up by a .pth file; Python does not read .pth files in a folder that a .pth file
    added, so for the machine's Python there is no dreamlab until a lesson installs it.
    """
    start = time.perf_counter()
    content = root / "content"
    content.mkdir(parents=True)
    env = root / "python"
    # --without-pip: Colab's pip is among the preinstalled packages (and ensurepip takes seconds)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    (site_packages / "colab-preinstalled.pth").write_text("\n".join(preinstalled_site_packages()) + "\n")
    (site_packages / "colab-google.pth").write_text(f"{STANDIN}\n")
    machine = Machine(root, content, env / "bin" / "python", site_packages, root / "ipython",
                      root / "kernels")
    machine.seconds["python"] = time.perf_counter() - start
    startup = machine.ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-google-colab.py").write_text("import google.colab  # as Colab's kernel does at start\n")
    (startup / "01-hub-probe.py").write_text(HUB_PROBE)
    spec = machine.kernels / "colab"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({  # %pip installs into sys.executable's environment
        "argv": [str(machine.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab rehearsal)", "language": "python"}))
    if clone:
        start = time.perf_counter()
        git(content, "clone", "-q", str(course.repository), course.repo.split("/")[1])
        machine.seconds["clone"] = time.perf_counter() - start
    return machine


def importable(machine: Machine, module: str) -> bool:
    """Whether the machine's Python, started outside /content, can import `module`."""
    done = subprocess.run([str(machine.python), "-c", f"import {module}"], cwd=machine.root,
                          capture_output=True, text=True)
    return done.returncode == 0


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(folders: list) -> dict[str, tuple]:
    """{distribution name: (version, where it was installed from)} for the packages in `folders`."""
    return {normalized(d.metadata["Name"]): (d.version, d.read_text("direct_url.json"))
            for d in importlib.metadata.distributions(path=[str(f) for f in folders])}


def kernel_environment(machine: Machine, course: Course) -> dict[str, str]:
    """What a kernel on the machine sees: this process's environment less what would steer it
    (an output folder, another Hub, a matplotlib backend, an active venv), plus Colab's."""
    dropped = ("DREAMLAB_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "MPLBACKEND", "VIRTUAL_ENV",
               "PYTHONPATH", "PYTHONHOME", "JUPYTER_", "IPYTHONDIR", "COLAB_", "PYTEST_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    preinstalled_bin = str(Path(sys.prefix) / "bin")  # if this run's venv is activated
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != preinstalled_bin]
    env.update(
        PATH=os.pathsep.join([str(machine.python.parent), *path]),  # `!pip`, `!python`: the machine's
        DREAMLAB_OFFLINE="0", DREAMLAB_DEVICE="cpu",  # the lessons' GPU branch, on the CPU
        HF_HOME=str(course.hub_cache.parent), HF_HUB_CACHE=str(course.hub_cache), HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS,
        IPYTHONDIR=str(machine.ipython_dir),
        COLAB_STANDIN_UPLOADS=str(course.uploads), COLAB_STANDIN_DRIVE=str(course.drive),
        COLAB_REHEARSAL_HUB_LOG=str(machine.hub_log),
    )
    return env


# ---------------------------------------------------------------------------------------------
# Running notebooks

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Run:
    """One notebook run on one machine."""

    name: str
    notebook: nbformat.NotebookNode  # with its outputs, also when it stopped early
    path: Path  # the executed copy
    seconds: float
    kernel_died: bool = False  # nbclient raised DeadKernelError
    disconnected: bool = False  # ... because the rehearsal killed the kernel

    def code_cells(self):
        return [(i, c) for i, c in enumerate(self.notebook.cells) if c.cell_type == "code"]

    def outputs(self):
        return [(i, o) for i, c in self.code_cells() for o in c.outputs]

    def errors(self):
        return [(i, o) for i, o in self.outputs() if o.output_type == "error"]

    def pictures(self) -> int:
        return sum("image/png" in o.get("data", {}) for _, o in self.outputs())

    def printed(self) -> str:
        """Everything the cells printed or displayed as text."""
        parts = [o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
                 for _, o in self.outputs()]
        return "\n".join(parts)

    def last_started_cell(self) -> int | None:
        started = [i for i, c in self.code_cells() if c.execution_count is not None]
        return started[-1] if started else None

    def cell_seconds(self, index: int) -> float | None:
        """How long a cell ran (nbclient's timestamps)."""
        times = self.notebook.cells[index].metadata.get("execution", {})
        if "iopub.execute_input" not in times or "shell.execute_reply" not in times:
            return None
        start, end = (datetime.fromisoformat(times[k].replace("Z", "+00:00"))
                      for k in ("iopub.execute_input", "shell.execute_reply"))
        return (end - start).total_seconds()

    def problems(self) -> list[str]:
        """Its errors (and an unexpected death) told readably: lesson, cell, source, traceback."""
        found = [describe(self.name, i, self.notebook.cells[i].source, "\n".join(o.traceback))
                 for i, o in self.errors()]
        if self.kernel_died and not self.disconnected:
            i = self.last_started_cell()
            found.append(describe(self.name, i, self.notebook.cells[i].source if i is not None else "",
                                  "the kernel died (out of memory?)"))
        return found


def describe(name: str, index, source: str, traceback: str) -> str:
    head = "\n".join("    | " + line for line in source.splitlines()[:4])
    tail = "\n".join("    " + line for line in ANSI.sub("", traceback).splitlines()[-12:])
    return f"{name}, cell {index}:\n{head}\n  ...\n{tail}"


class Disconnect(threading.Thread):
    """Takes the machine away, as a Colab disconnect does, once `when()` is true: SIGKILL to
    the kernel and everything it started (the kernel leads its own process group)."""

    def __init__(self, client: NotebookClient, when):
        super().__init__(daemon=True)
        self.client, self.when = client, when
        self.stopped, self.fired = threading.Event(), False

    def run(self):
        while not self.stopped.wait(0.2):
            provisioner = getattr(self.client.km, "provisioner", None)
            pid = getattr(provisioner, "pid", None)
            if pid and self.when():
                if provisioner.pgid == pid:  # its own group: never this process's
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
                self.fired = True
                return


def complete_checkpoints(folder: Path) -> set[Path]:
    """Checkpoint folders (checkpoint-NNNNNN) holding their state.json, anywhere under `folder`;
    a checkpoint being written is named checkpoint-NNNNNN.tmp and does not count."""
    try:
        return {p.parent for p in folder.rglob("state.json")
                if re.fullmatch(r"checkpoint-\d+", p.parent.name)}
    except OSError:  # a folder vanished while we looked (an old checkpoint being deleted)
        return set()


def run_notebook(nb: nbformat.NotebookNode, name: str, machine: Machine, course: Course, out_dir: Path,
                 disconnect_when=None, allow_errors: bool = False) -> Run:
    """Execute `nb` top to bottom in a new kernel on `machine`, stopping at the first error as
    Colab's "Run all" does (unless `allow_errors`); no time limit per cell. `disconnect_when`: a
    function polled while it runs; the kernel is killed when it returns True."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    specs = KernelSpecManager(kernel_dirs=[str(machine.kernels)])
    client = NotebookClient(nb, km=AsyncKernelManager(kernel_name="colab", kernel_spec_manager=specs),
                            timeout=None, startup_timeout=600, record_timing=True,
                            allow_errors=allow_errors)
    watcher = Disconnect(client, disconnect_when) if disconnect_when else None
    died = False
    start = time.perf_counter()
    if watcher:
        watcher.start()
    try:
        client.execute(cleanup_kc=True, cwd=str(machine.content), env=kernel_environment(machine, course))
    except DeadKernelError:
        died = True
    except CellExecutionError:
        pass  # the error is in the cell's outputs
    finally:
        if watcher:
            watcher.stopped.set()
            watcher.join()
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.ipynb"
    nbformat.write(nb, path)
    return Run(name, nb, path, seconds, kernel_died=died, disconnected=bool(watcher and watcher.fired))


def notebook_of(sources: list[str]) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def fill_form(nb: nbformat.NotebookNode, name: str, value) -> None:
    """Set a Colab form field (a line `NAME = value  # @param ...`) as a learner does in the form."""
    field_line = re.compile(rf"^(\s*{re.escape(name)}\s*=\s*).*?(\s*#\s*@param\b.*)$", re.M)
    for cell in nb.cells:
        if cell.cell_type == "code" and field_line.search(cell.source):
            cell.source = field_line.sub(lambda m: f"{m[1]}{value!r}{m[2]}", cell.source)
            return
    raise ValueError(f"no form field {name} (a line '{name} = ...  # @param ...') in the notebook")


def lesson_paths(course: Course) -> list[Path]:
    """The lessons as published with the package: Colab opens them from GitHub, and the checkout's
    own may have changed since the package was published (the rewrite goes on while we run)."""
    return sorted((course.repository / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def at_content(source: str, machine: Machine) -> str:
    """A cell's source with Colab's working directory, /content, where this machine has it."""
    return re.sub(r"(?<![\w./-])/content(?![\w.-])", str(machine.content), source)


def prepare_lesson(path: Path, course: Course, machine: Machine, forms: dict | None = None):
    """The lesson as the rehearsal runs it on `machine`: the install cell (cell 1) pointed at the
    course's copy here, /content wherever a cell names it, and the form fields a learner sets."""
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = course.on_this_machine(nb.cells[1].source)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = at_content(cell.source, machine)
    for name, value in (forms or {}).items():
        fill_form(nb, name, value)
    return nb


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def preinstalled_changes(machine: Machine) -> set[str]:
    """Preinstalled distributions that pip installed again into the machine (another version,
    or the same one from elsewhere): its own site-packages starts empty, so all it holds came
    from the lessons' installs."""
    added = set(distributions([machine.site_packages])) - {"dreamlab"}
    return added & set(distributions(preinstalled_site_packages()))


def written_into_package(machine: Machine) -> list[Path]:
    """Files inside the installed dreamlab that pip did not put there (its RECORD): a lesson wrote
    them, where they would be lost with the machine and mixed with the package."""
    found = list(importlib.metadata.distributions(name="dreamlab", path=[str(machine.site_packages)]))
    if not found:
        return []
    recorded = {(machine.site_packages / f).resolve() for f in found[0].files or []}
    return sorted(p for p in files_under(machine.site_packages / "dreamlab") if p.resolve() not in recorded)
