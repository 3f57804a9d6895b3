"""The language of what the package says to a learner in the lessons: "en" or "pt-BR".

Each lesson's parameter cell calls `dreamlab.set_language(...)`; the Portuguese lessons say
"pt-BR". That one call is the only code that differs between a lesson and its translation:
the setup check and the exercises' verdicts then speak the lesson's language (`say`).
Errors and the command line stay in English, as the libraries underneath them do.
"""

LANGUAGES = ("en", "pt-BR")
_language = "en"


def set_language(language: str) -> str:
    global _language
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r}: choose one of {', '.join(LANGUAGES)}")
    _language = language
    return language


def language() -> str:
    return _language


def say(en: str, pt: str) -> str:
    """The text in the lessons' language."""
    return pt if _language == "pt-BR" else en
