"""The errors a user can fix: bad options, bad data, a model or tokenizer that cannot be found.

Everything raised for a user's input derives from :class:`UserError`, so the command line can
tell such an error (print its message, exit 2) from a bug in posttrain (print the traceback).
Each class also derives from the built-in exception that Python code would expect
(``ValueError`` for bad values, ``FileNotFoundError`` for missing files), so callers that catch
those keep working.

A message says what is wrong, where (option, file and line, row and field) and the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user, not a bug: the message alone tells them what to change."""


class ConfigError(UserError, ValueError):
    """An option has a wrong type, is out of its range, or contradicts another option."""


class DataError(UserError, ValueError):
    """A data file or row that cannot be used as given."""


class DataFileError(DataError):
    """A data file that cannot be read: missing, empty, unsupported, or not in its format."""


class ModelError(UserError, ValueError):
    """A model or tokenizer that cannot be found or used."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN): the message says why and what to try."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that the requested feature needs is not installed: the message names
    the ``pip install`` that fixes it."""


class OutputDirError(UserError, FileExistsError):
    """The output directory holds a run that this one must not silently replace or mix with."""


class HubError(UserError, RuntimeError):
    """The Hugging Face Hub could not be reached or refused an upload; the model is safe on disk."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """``resume_from_checkpoint`` names a path that holds no checkpoint."""
