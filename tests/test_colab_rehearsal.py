"""The Colab rehearsal (tests/colab_rehearsal.py): the install cell, and the whole course, run as a
new Colab user runs them, each lesson on a fresh machine, here on the CPU with a micro SD 1.5.

Timings are printed (pytest -s shows them); executed notebooks are kept under pytest's tmp folder.
"""

import dataclasses
import json
import time
from pathlib import Path

import nbformat
import pytest
from colab_rehearsal import (
    SD15,
    UPLOAD_LIMIT,
    Course,
    Machine,
    at_content,
    build_hub,
    complete_checkpoints,
    course_repository_script,
    distributions,
    files_under,
    importable,
    lesson_paths,
    new_machine,
    notebook_of,
    pick_photos,
    preinstalled_changes,
    preinstalled_site_packages,
    prepare_lesson,
    publish_course,
    run_notebook,
    written_into_package,
)

from dreamlab.metrics import CLIP, DINO

# The install cell of the lessons until the package shipped its assets: a clone in /content and
# an editable install of it. /content is on sys.path, so `import dreamlab` finds the clone's root
# folder (no __init__.py) as a namespace package before the editable install's finder is asked.
OLD_INSTALL_CELL = '''\
import sys
IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:  # get the course's code and data; Colab already has torch, diffusers, transformers
    !git clone -q https://github.com/{repo} /content/{name}
    %pip install -q -e /content/{name}'''

# In the kernel, after the install: where dreamlab comes from, and where the kernel stands
WHERE_IS_DREAMLAB = '''\
import json, os, sys
import dreamlab
print(json.dumps({"file": dreamlab.__file__, "cwd": os.getcwd(), "offline_model": dreamlab.offline_model(),
                  "sys_path": [os.path.abspath(p or os.curdir) for p in sys.path]}))'''
LOAD_SD15 = '''\
parts = dreamlab.load_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
print(json.dumps({"name": parts.name, "unet": type(parts.unet).__name__}))'''
NAMESPACE_PROBE = '''\
import dreamlab
print(getattr(dreamlab, "__file__", None), list(dreamlab.__path__))'''

# The form fields a learner sets: in lesson 2 they upload photos of their cat, and say it is a cat
FORMS = {"02": {"MY_PHOTOS": "upload", "INSTANCE_PROMPT": "a photo of sks cat",
                "CLASS_PROMPT": "a photo of a cat"}}
# The learner's photos: three of a cat, and a fourth too large for Colab's upload
PHOTOS, OVERSIZED = ["cat2/00.jpg", "cat2/01.jpg", "cat2/02.jpg"], "cat2/03.jpg"


@pytest.fixture(scope="module")
def course(tmp_path_factory, dreambooth_photos) -> Course:
    """GitHub, the Hub, the learner's Drive and photos: shared by every machine of this module."""
    world = tmp_path_factory.mktemp("colab-world")
    repo, ref = course_repository_script().repository()
    start = time.perf_counter()
    publish_course(world / "github", repo, ref)
    published = time.perf_counter()
    sd15 = build_hub(world / "hf" / "hub")
    built = time.perf_counter()
    print(f"\nthe course on 'GitHub': {published - start:.1f} s; SD 1.5's stand-in on 'the Hub': "
          f"{built - published:.1f} s")
    (world / "drive" / "MyDrive").mkdir(parents=True)
    pick_photos(world / "uploads", [dreambooth_photos / p for p in PHOTOS], dreambooth_photos / OVERSIZED)
    return Course(world / "github", world / "hf" / "hub", world / "drive", world / "uploads", sd15, repo, ref)


def test_the_hub_cache_resolves_sd15_offline(course):
    from huggingface_hub import snapshot_download

    from dreamlab.models import NEEDED_FILES

    found = snapshot_download(SD15, allow_patterns=NEEDED_FILES, local_files_only=True,
                              cache_dir=course.hub_cache)
    assert Path(found) == course.sd15
    assert (course.sd15 / "unet" / "diffusion_pytorch_model.safetensors").resolve().is_file()


def test_broken_install_cell_fails(course, tmp_path):
    """The old install cell, run as the lessons had it, leaves `import dreamlab...` broken."""
    machine = new_machine(tmp_path / "machine", course, clone=False)  # the cell makes the clone
    name = course.repo.split("/")[1]
    broken = at_content(OLD_INSTALL_CELL.format(repo=course.repo, name=name), machine)
    imports = nbformat.read(lesson_one(course), as_version=4).cells[2].source
    run = run_notebook(notebook_of([course.on_this_machine(broken), imports, NAMESPACE_PROBE]),
                       "01-old-install-cell", machine, course, tmp_path, allow_errors=True)
    assert (machine.content / name / "pyproject.toml").exists(), "the old cell's clone did not happen"
    assert [i for i, _ in run.errors()] == [1], "\n\n".join(run.problems())
    _, error = run.errors()[0]
    assert error.ename in ("ModuleNotFoundError", "ImportError", "AttributeError"), error.evalue
    # and why: `dreamlab` is the clone's root folder, a namespace package
    assert run.notebook.cells[2].outputs[0].text.split() == ["None", f"['{machine.content / name}']"]


def test_install_cell_works_in_the_running_kernel(course, tmp_path):
    lesson = nbformat.read(lesson_one(course), as_version=4)
    script = course_repository_script()
    assert lesson.cells[1].source == script.install_cell(course.repo, course.ref), \
        "lesson 1's install cell is not the one scripts/course_repository.py makes"
    machine = new_machine(tmp_path / "machine", course)
    assert not importable(machine, "dreamlab"), "the fresh machine must not have dreamlab yet"
    preinstalled = distributions(preinstalled_site_packages())
    install, imports = course.on_this_machine(lesson.cells[1].source), lesson.cells[2].source
    cells = [install, imports, WHERE_IS_DREAMLAB, LOAD_SD15]
    run = run_notebook(notebook_of(cells), "01-install-cell", machine, course, tmp_path)
    print(f"\nnew machine {machine.seconds['python']:.1f} s (clone {machine.seconds['clone']:.1f} s), "
          f"install cell {run.cell_seconds(0):.1f} s, imports {run.cell_seconds(1):.1f} s, "
          f"SD 1.5 loaded in {run.cell_seconds(3):.1f} s; kernel {run.seconds:.1f} s in all")
    assert not run.problems(), "\n\n".join(run.problems())

    where = json.loads(run.notebook.cells[2].outputs[0].text)
    package = machine.site_packages / "dreamlab"
    assert Path(where["file"]) == package / "__init__.py"  # not the clone, not this checkout
    assert where["cwd"] == str(machine.content) and str(machine.content) in where["sys_path"]
    # ... though /content held a folder named dreamlab: a regular package beats a namespace folder
    clone = machine.content / "dreamlab"
    assert clone.is_dir() and not (clone / "__init__.py").exists()
    assert Path(where["offline_model"]).is_relative_to(package)  # the assets ship in the package
    assert (Path(where["offline_model"]) / "model_index.json").is_file()
    loaded = json.loads(run.notebook.cells[3].outputs[-1].text)
    assert Path(loaded["name"]) == course.sd15 and loaded["unet"] == "UNet2DConditionModel"

    assert "dreamlab" in distributions([machine.site_packages])
    assert not preinstalled_changes(machine), "the install cell reinstalled preinstalled packages"
    assert distributions(preinstalled_site_packages()) == preinstalled, "the install changed this venv"


def test_a_disconnect_kills_the_kernel_once_a_checkpoint_is_on_drive(course, tmp_path):
    """The rehearsal's own disconnect, on a notebook that mounts Drive and writes a checkpoint
    as dreamlab does (a .tmp folder, then renamed): the kernel dies in the cell after the rename."""
    own = dataclasses.replace(course, drive=tmp_path / "drive")
    (own.drive / "MyDrive").mkdir(parents=True)
    machine = new_machine(tmp_path / "machine", own, clone=False)
    cells = ["import os, time\nfrom pathlib import Path\nfrom google.colab import drive\n"
             "drive.mount(str(Path.cwd() / 'drive'))\n"
             "folder = Path('drive/MyDrive/run/checkpoint-000100.tmp')\nfolder.mkdir(parents=True)\n"
             "(folder / 'state.json').write_text('{}')\ntime.sleep(1)  # still being written",
             "folder.rename(folder.with_suffix(''))\ntime.sleep(300)"]
    run = run_notebook(notebook_of(cells), "disconnect", machine, own, tmp_path,
                       disconnect_when=lambda: bool(complete_checkpoints(own.drive)))
    assert run.disconnected and run.kernel_died
    assert run.last_started_cell() == 1 and run.seconds < 120
    assert "Mounted at" in run.printed()
    assert (own.drive / "MyDrive" / "run" / "checkpoint-000100" / "state.json").exists()


# ---------------------------------------------------------------------------------------------
# The whole course

def run_lesson(path: Path, course: Course, root: Path, name: str, disconnect_when=None):
    machine = new_machine(root / name, course)
    nb = prepare_lesson(path, course, machine, FORMS.get(path.name[:2]))
    return machine, run_notebook(nb, name, machine, course, root / "executed", disconnect_when)


def lesson_one(course: Course) -> Path:
    return next(p for p in lesson_paths(course) if p.name.startswith("01_"))


def lesson_problems(run, machine: Machine, course: Course) -> list[str]:
    """What went wrong in a lesson's run, each told with the lesson's name."""
    problems = run.problems()
    made = course_repository_script().install_cell(course.repo, course.ref)
    if run.notebook.cells[1].source != at_content(course.on_this_machine(made), machine):
        problems.insert(0, f"{run.name}: its install cell (cell 1) is not the one "
                        "scripts/course_repository.py makes")
    if problems:
        return problems
    if not run.pictures():
        problems.append(f"{run.name}: no picture (image/png) in its outputs")
    toy_world_only = run.name.startswith("00_")  # lesson 0 draws with the toy model, GPU or not
    if not toy_world_only and not opened(machine, SD15):
        problems.append(f"{run.name}: never opened SD 1.5's files in the Hub cache: it took the offline "
                        "branch")
    if run.name.startswith("04_"):  # the paper's metrics: DINO and CLIP, from the Hub
        problems += [f"{run.name}: never opened {model}'s files in the Hub cache" for model in (DINO, CLIP)
                     if not opened(machine, model)]
    if preinstalled_changes(machine):
        problems.append(f"{run.name}: pip reinstalled preinstalled packages "
                        f"{sorted(preinstalled_changes(machine))}")
    if written_into_package(machine):
        problems.append(f"{run.name}: wrote into the installed package: {written_into_package(machine)[:5]}")
    return problems


def opened(machine: Machine, model_id: str) -> bool:
    """Did the machine read `model_id`'s config from the Hub cache?"""
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=model_id, repo_type="model")
    return any(folder in f and f.endswith("config.json") for f in machine.hub_files())


def upload_problems(run, course: Course) -> list[str]:
    """Lesson 2 must notice the photo that arrived cut short, and send the learner to Drive."""
    big = next(p.name for p in course.uploads.iterdir() if p.stat().st_size >= UPLOAD_LIMIT)
    text = run.printed()
    if big in text and "Drive" in text:
        return []
    return [f"{run.name}: files.upload() returned {big} cut short (it is over 2 MB) and the lesson did not "
            f"say so, naming the file and the Drive route"]


def where_it_wrote(machine: Machine, course: Course) -> str:
    clone = machine.content / course.repo.split("/")[1]
    files = [p for p in files_under(machine.content) if not p.is_relative_to(clone)]
    tops = sorted({str(p.relative_to(machine.content).parts[0]) for p in files})
    return f"{len(files)} files under /content ({', '.join(tops) or '-'})"


def test_the_course_on_colab(course, tmp_path):
    """Lessons 0 to 5 in order, each on a fresh machine, with one Drive; lesson 3 is disconnected
    as soon as a checkpoint is on Drive, then run again on a new machine: it must resume."""
    problems, lines = [], []

    def note(machine, run):
        install = run.cell_seconds(1)
        lines.append(f"{run.name:34} {run.seconds:6.0f} s (machine {sum(machine.seconds.values()):4.1f} s, "
                     f"install {install if install is not None else float('nan'):4.1f} s), "
                     f"{run.pictures()} pictures, {where_it_wrote(machine, course)}; "
                     f"Drive: {len(files_under(course.drive))} files")

    for path in lesson_paths(course):
        if path.name.startswith("03_"):
            problems += disconnect_and_resume(path, course, tmp_path, note)
            continue
        try:
            machine, run = run_lesson(path, course, tmp_path, path.stem)
        except ValueError as e:  # a form field the rehearsal sets is gone
            problems.append(f"{path.stem}: {e}")
            continue
        note(machine, run)
        problems += lesson_problems(run, machine, course)
        if path.name.startswith("02_") and not run.problems():
            problems += upload_problems(run, course)
    print("\n" + "\n".join(lines))
    assert not problems, "\n\n".join(problems)


def disconnect_and_resume(path: Path, course: Course, root: Path, note) -> list[str]:
    before = complete_checkpoints(course.drive)
    appeared = []

    def checkpoint_on_drive() -> bool:
        appeared.extend(sorted(complete_checkpoints(course.drive) - before))
        return bool(appeared)

    machine, first = run_lesson(path, course, root, f"{path.stem}-disconnected", checkpoint_on_drive)
    note(machine, first)
    if not first.disconnected:
        return lesson_problems(first, machine, course) + [
            f"{first.name}: it finished without a complete checkpoint (checkpoint-NNNNNN holding "
            "state.json) appearing on Drive, so there was nothing to resume"]
    if not first.kernel_died:
        return [f"{first.name}: the kernel was killed but nbclient did not report it dead"]
    cell = first.last_started_cell()
    first_line = (first.notebook.cells[cell].source.splitlines() or [""])[0]
    print(f"\ndisconnected in cell {cell} ({first_line!r}) when {appeared[0]} appeared")

    machine, again = run_lesson(path, course, root, path.stem)
    note(machine, again)
    problems = lesson_problems(again, machine, course)
    resumed = [line for line in again.printed().splitlines() if "resumed from" in line]
    if not problems and not any(appeared[0].name in line for line in resumed):
        problems.append(f"{again.name}: after the disconnect it did not print that it resumed from "
                        f"{appeared[0].name} (lines with 'resumed from': {resumed})")
    return problems
