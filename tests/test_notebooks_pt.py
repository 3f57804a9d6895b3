"""Every Portuguese lesson runs top to bottom offline, on its own (its own output folder, as
`make lessons` gives each language), with wrong answers in its exercises: their hints, in
Portuguese, must show. The code is the English lessons' code, cell by cell (test_translations.py)."""

import pytest
from lesson_runs import check_lesson_run

from dreamlab.lessons import lesson_paths


@pytest.fixture(scope="module")
def lesson_output(tmp_path_factory):
    return tmp_path_factory.mktemp("licoes")


@pytest.mark.parametrize("path", lesson_paths(language="pt-BR"), ids=lambda p: p.stem)
def test_a_portuguese_lesson_runs_offline_and_gives_its_hints(path, tmp_path, lesson_output):
    check_lesson_run(path, "wrong", tmp_path, lesson_output)
