"""User-facing errors: raised for bad input or config, printed by main without a traceback."""


class EhrJaxError(Exception):
    """A mistake the user can fix; the message names the file, column or config key."""


class ConfigError(EhrJaxError):
    """A config key has a value the code cannot use."""


class DataError(EhrJaxError):
    """An input dataset (MEDS, labels, prepared shards) is malformed."""
