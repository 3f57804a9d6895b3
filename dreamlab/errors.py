class DreamlabError(Exception):
    """A problem with the user's input or setup, with a message that says what to do.

    The command line prints only the message; notebooks show a short traceback because
    it is raised `from None` where it replaces a library's deeper error.
    """
