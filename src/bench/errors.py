"""Errors a user can act on. The CLI prints their message alone, never a traceback."""


class BenchError(Exception):
    """Base class: the message names the file, option or value and says what is valid."""


class DatasetError(BenchError):
    """A dataset tree, image or mask that cannot be used."""


class ConfigError(BenchError):
    """An option or config value that is out of range or unknown."""


class WeightsError(BenchError):
    """Model weights that cannot be found or loaded."""


class OptionTypeError(ConfigError, TypeError):
    """An unknown plugin option (``REFINERS.create("ard", stepz=3)``); still a TypeError for callers."""


class OptionValueError(ConfigError, ValueError):
    """An out-of-range plugin option; still a ValueError for callers."""


def first_few(items: list[object], shown: int = 3) -> str:
    """The first ``shown`` items of a non-empty list and how many more, for one-line messages:
    ``a, b, c (and 4 more)``."""
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(str(item) for item in items[:shown]) + more
