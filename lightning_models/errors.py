"""The error for a setting that cannot work."""


class ConfigError(ValueError):
    """A setting that cannot work. Its message names the key (``data.canvas``, ``SpatialTransformer tps_grid``)
    and what would work; ``dl4`` prints it as one line, before any run is created, and exits with status 2."""
