class DreamlabError(Exception):
    """A problem with the user's input or setup, with a message that says what to do.

    The command line prints only the message, and so do notebooks (`in_notebooks_say_only_the_message`):
    the traceback would point into dreamlab's code, while the fix is in the learner's settings or files.
    """


def in_notebooks_say_only_the_message(shell=None) -> None:
    """In IPython (Jupyter, Colab), show a DreamlabError as its one-line message, not a traceback.
    The cell still fails, so "Run all" stops there as it should."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((DreamlabError,), show_the_message)


def show_the_message(shell, etype, value, tb, tb_offset=None) -> list[str]:
    lines = [f"DreamlabError: {value}"]
    shell._showtraceback(etype, value, lines)  # as IPython shows any error (Jupyter: an error output)
    return lines
