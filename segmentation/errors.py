"""Domain errors: everything a user can get wrong, reported as one line and never as a traceback."""


class PromptcutError(Exception):
    """Base of the errors that mean bad input, not a bug: the CLI prints them in one line."""


class InputError(PromptcutError):
    """A volume, file or argument that promptcut cannot use as given."""


class ConfigError(PromptcutError):
    """A configuration file that is unreadable or fails validation; the message names the key."""
