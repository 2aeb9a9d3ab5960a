"""The error for a setting that cannot work."""


class ConfigError(ValueError):
    """A setting that cannot work. Its message names the key (``data.canvas``, ``SpatialTransformer tps_grid``)
    and what would work; ``dl4`` prints it as one line, before any run is created, and exits with status 2."""


def check_positive(where: str, **values) -> None:
    """ConfigError unless every value (a number, or a list of numbers such as hidden sizes) is > 0; ``where`` is
    the key's prefix as a user writes it (``model``, ``data``, ``Encoder``)."""
    for key, value in values.items():
        if value is None:
            continue
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if any(not isinstance(v, (int, float)) or v <= 0 for v in items):
            each = " (each entry)" if isinstance(value, (list, tuple)) else ""
            raise ConfigError(f"{where}.{key} must be > 0{each}, got {value!r}")


def check_fraction(where: str, closed_above: bool = True, **values) -> None:
    """ConfigError unless every value is a probability: in [0, 1] (or [0, 1) with ``closed_above=False``)."""
    for key, value in values.items():
        if value is None:
            continue
        if not (0 <= value <= 1 if closed_above else 0 <= value < 1):
            raise ConfigError(f"{where}.{key} must be in [0, 1{']' if closed_above else ')'}, got {value!r}")


class InputError(ValueError):
    """An input of ``dl4 predict`` that cannot be used (an unreadable image, a story line that does not parse, a
    sequence of the wrong width). Its message names the file (and line) and what to do; ``dl4`` prints it as one
    line and exits with status 1 before any output is written."""
