"""Every lesson runs top to bottom offline (as `make lessons` runs them) and shows pictures."""

import importlib.util

import nbformat
import pytest

from dreamlab.lessons import ROOT, lesson_paths, run_lesson

LESSONS = lesson_paths()
spec = importlib.util.spec_from_file_location("course_repository", ROOT / "scripts" / "course_repository.py")
course = importlib.util.module_from_spec(spec)
spec.loader.exec_module(course)


def test_there_are_five_lessons_in_order():
    assert [p.name[:3] for p in LESSONS] == ["01_", "02_", "03_", "04_", "05_"]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_is_committed_clean_with_badge_install_and_parameters(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
    repo, ref = course.repository()  # pyproject.toml's: the badge and install cell are made from it
    assert nb.cells[0].source.splitlines()[-1] == course.badge(repo, ref, path.name)
    assert nb.cells[1].source == course.install_cell(repo, ref)
    assert "parameters" in nb.cells[2].metadata.get("tags", [])
    assert "OFFLINE = colab.offline()" in nb.cells[2].source
    later = "".join(c.source for c in nb.cells[3:])
    assert "OFFLINE" not in later, "only the parameter cell may branch on offline"


def test_one_command_points_the_course_at_another_repository(tmp_path):
    """An instructor's copy: pyproject.toml, every badge and install cell, the README follow."""
    import shutil

    for name in ("pyproject.toml", "README.md", "notebooks", "scripts"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    script = tmp_path / "scripts" / "course_repository.py"
    spec = importlib.util.spec_from_file_location("their_copy", script)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    assert theirs.main(["someone/their-course", "--ref", "workshop"]) == 0
    assert theirs.repository() == ("someone/their-course", "workshop")
    for path in sorted((tmp_path / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert "git+https://github.com/someone/their-course@workshop" in nb.cells[1].source
        assert f"github/someone/their-course/blob/workshop/notebooks/{path.name}" in nb.cells[0].source
    readme = (tmp_path / "README.md").read_text()
    assert "dreamlab-course/dreamlab" not in readme and "someone/their-course/blob/workshop" in readme


@pytest.fixture(scope="module")
def lesson_output(tmp_path_factory):
    return tmp_path_factory.mktemp("lesson-output")  # shared: lesson 4 uses lesson 3's model


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_offline_and_shows_pictures(path, tmp_path, lesson_output):
    executed = nbformat.read(run_lesson(path, tmp_path, output=lesson_output), as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3, f"{path.name} shows only {len(pictures)} pictures"
    assert (tmp_path / path.with_suffix(".html").name).exists()


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
