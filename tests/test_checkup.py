"""Lesson 1's "check my setup" cell: one line per check, and what to do when something is wrong."""

import importlib.metadata

from dreamlab import checkup, set_language


def test_a_ready_machine_is_ready(tmp_path, capsys):
    assert checkup.check_setup(tmp_path) == []
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all(line.startswith("✅") for line in out[:4]) and out[-1] == "Ready: go on."


def test_colab_without_a_gpu_says_how_to_get_one(monkeypatch, tmp_path, capsys):
    from dreamlab import colab

    monkeypatch.setattr(colab, "in_colab", lambda: True)
    problems = checkup.check_setup(tmp_path)
    assert len(problems) == 1 and "Runtime > Change runtime type > T4 GPU" in problems[0]
    assert capsys.readouterr().out.splitlines()[-1].startswith("Fix first: no GPU")


def test_a_full_drive_and_an_old_library_are_named_with_the_cure(monkeypatch, tmp_path, capsys):
    import shutil
    from collections import namedtuple

    drive = tmp_path / "drive" / "MyDrive" / "dreamlab"
    drive.mkdir(parents=True)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(15e9, 13e9, 2e9))
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.30.0" if name == "diffusers" else real_version(name))
    set_language("pt-BR")
    try:
        problems = checkup.check_setup(drive)
    finally:
        set_language("en")
    assert len(problems) == 2
    assert "Drive: 2.0 GB livres" in problems[0] and "SAVE_TO_DRIVE = False" in problems[0]
    assert "diffusers 0.30.0" in problems[1] and "%pip install -U diffusers" in problems[1]
    assert capsys.readouterr().out.splitlines()[-1].startswith("Corrija antes: Drive")


def test_a_missing_toy_model_says_reinstall(monkeypatch, tmp_path):
    from dreamlab import offline

    monkeypatch.setattr(offline, "TOY_MODEL", tmp_path / "gone")
    problems = checkup.check_setup(tmp_path)
    assert len(problems) == 1 and "reinstall" in problems[0]


def test_in_a_notebook_a_dreamlab_error_is_its_message_not_a_traceback(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from dreamlab.errors import in_notebooks_say_only_the_message

    shell = InteractiveShell.instance()
    in_notebooks_say_only_the_message(shell)
    result = shell.run_cell("from dreamlab import DreamlabError\n"
                            "raise DreamlabError('photos/00.jpg cannot be read: export it as JPEG')")
    assert isinstance(result.error_in_exec, Exception)  # the cell still fails: Run all stops there
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "DreamlabError: photos/00.jpg cannot be read: export it as JPEG" in text
    assert "Traceback" not in text and "line " not in text
    result = shell.run_cell("raise ValueError('a bug')")  # other errors keep their traceback
    assert "Traceback" in "".join(capsys.readouterr())
    InteractiveShell.clear_instance()
