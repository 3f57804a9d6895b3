"""Every lesson runs top to bottom offline (as `make lessons` runs them) and shows pictures."""

import importlib.util

import nbformat
import pytest
from lesson_runs import check_lesson_run

from dreamlab.lessons import ROOT, lesson_paths

LESSONS = lesson_paths()
PORTUGUESE = lesson_paths(language="pt-BR")
spec = importlib.util.spec_from_file_location("course_repository", ROOT / "scripts" / "course_repository.py")
course = importlib.util.module_from_spec(spec)
spec.loader.exec_module(course)


def test_there_are_six_lessons_in_order_in_each_language():
    for paths in (LESSONS, PORTUGUESE):
        assert [p.name[:3] for p in paths] == ["00_", "01_", "02_", "03_", "04_", "05_"]


@pytest.mark.parametrize("path", LESSONS + PORTUGUESE, ids=lambda p: p.stem)
def test_lesson_is_committed_clean_with_badge_install_and_parameters(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
    repo, ref = course.repository()  # pyproject.toml's: the badge and install cell are made from it
    assert nb.cells[0].source.splitlines()[-1] == course.badge(repo, ref, course.under_notebooks(path))
    assert nb.cells[1].source == course.install_cell(repo, ref, "pt-BR" if path in PORTUGUESE else "en")
    assert "parameters" in nb.cells[2].metadata.get("tags", [])
    if not path.name.startswith("00_"):  # lesson 0 is the toy world everywhere
        assert "OFFLINE = colab.offline()" in nb.cells[2].source
    later = "".join(c.source for c in nb.cells[3:])
    assert "OFFLINE" not in later, "only the parameter cell may branch on offline"
    exercises = [c for c in nb.cells if "answer" in c.metadata.get("tags", [])]
    assert 2 <= len(exercises) <= 3, "each lesson ends with two or three exercises"
    for cell in exercises:
        assert cell.source.startswith(cell.source.split("=")[0] + "= ...")  # left to the learner
        assert {"solution", "wrong"} <= set(cell.metadata["dreamlab"])


def test_one_command_points_the_course_at_another_repository(tmp_path):
    """An instructor's copy: pyproject.toml, every badge and install cell, the README follow."""
    import shutil

    for name in ("pyproject.toml", "README.md", "README.pt-BR.md", "notebooks", "scripts", "docs"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    script = tmp_path / "scripts" / "course_repository.py"
    spec = importlib.util.spec_from_file_location("their_copy", script)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    assert theirs.main(["someone/their-course", "--ref", "workshop"]) == 0
    assert theirs.repository() == ("someone/their-course", "workshop")
    for path in sorted((tmp_path / "notebooks").rglob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert "git+https://github.com/someone/their-course@workshop" in nb.cells[1].source
        where = path.relative_to(tmp_path / "notebooks").as_posix()
        assert f"github/someone/their-course/blob/workshop/notebooks/{where}" in nb.cells[0].source
        assert "github.com/someone/their-course/blob/workshop/docs/glossary.md" in nb.cells[0].source
    for readme in ("README.md", "README.pt-BR.md"):
        text = (tmp_path / readme).read_text()
        assert "dreamlab-course/dreamlab" not in text and "someone/their-course/blob/workshop" in text


@pytest.fixture(scope="module")
def lesson_output(tmp_path_factory):
    return tmp_path_factory.mktemp("lesson-output")  # shared, as by a learner: lesson 4 uses lesson 3's model


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_offline_and_shows_pictures(path, tmp_path, lesson_output):
    """The English lessons, with their exercises' solutions (tests/test_notebooks_pt.py runs the
    Portuguese ones, with wrong answers)."""
    check_lesson_run(path, "solution", tmp_path, lesson_output)


def test_a_failing_lesson_is_written_with_its_error_and_the_next_ones_still_run(tmp_path, monkeypatch):
    from dreamlab import lessons

    for name, cells in [("01_fine.ipynb", ["print('one')"]),
                        ("02_broken.ipynb", ["print('two')", "raise ValueError('failed here')", "print(3)"]),
                        ("03_fine.ipynb", ["print('three')"])]:
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]),
                       tmp_path / name)
    monkeypatch.setattr(lessons, "NOTEBOOKS", tmp_path)
    out = tmp_path / "out"
    assert lessons.main(["--out", str(out)]) == 1
    broken = nbformat.read(out / "02_broken.ipynb", as_version=4)
    assert broken.cells[1].outputs[0].ename == "ValueError" and not broken.cells[2].outputs
    assert (out / "02_broken.html").exists() and (out / "03_fine.ipynb").exists()


def test_two_lessons_run_at_once_and_a_lesson_waits_for_the_one_it_uses(tmp_path, monkeypatch):
    """--jobs 2: lesson 3 starts when lesson 2 (whose class images it tops up) has ended, while
    lessons 0 and 1, which need nothing, run beside them."""
    from dreamlab import lessons

    log = tmp_path / "log"
    log.mkdir()
    def stamp(name):  # a cell that writes the time it ran to log/name
        return f"import pathlib, time; pathlib.Path({str(log)!r}, {name!r}).write_text(str(time.time()))"

    cells = {"00_free.ipynb": [stamp("00-start"), "time.sleep(4)", stamp("00-end")],
             "02_makes.ipynb": [stamp("02-start"), "time.sleep(4)", stamp("02-end")],
             "03_uses.ipynb": [f"import pathlib; assert pathlib.Path({str(log)!r}, '02-end').exists()",
                               stamp("03-start")]}
    for name, sources in cells.items():
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in sources]),
                       tmp_path / name)
    monkeypatch.setattr(lessons, "NOTEBOOKS", tmp_path)
    assert lessons.main(["--out", str(tmp_path / "out"), "--language", "en", "--jobs", "2"]) == 0
    at = {p.name: float(p.read_text()) for p in log.iterdir()}
    assert at["03-start"] > at["02-end"]
    assert at["00-start"] < at["02-end"] and at["02-start"] < at["00-end"]  # side by side
