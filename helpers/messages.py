"""Warnings of the course's helpers, shown as their message alone.

Python prints a warning as ``/path/to/file.py:LINE: UserWarning: message``: in a notebook that path is the
student's machine (or ``/tmp/ipykernel_*/…``) and says nothing useful, while the message already names the file,
row or setting concerned. Course warnings are printed as ``CourseWarning: message`` instead; every other
warning keeps Python's format.
"""

from __future__ import annotations

import warnings


class CourseWarning(UserWarning):
    """A warning raised by the course's helpers (a subclass of UserWarning, so filters on that still apply)."""


_python_format = warnings.formatwarning


def _format(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, CourseWarning):
        return f"{category.__name__}: {message}\n"
    return _python_format(message, category, filename, lineno, line)


warnings.formatwarning = _format


def warn(message: str) -> None:
    """Warn once per call site, in Chinese and English, without the machine's file path."""
    warnings.warn(message, CourseWarning, stacklevel=3)
