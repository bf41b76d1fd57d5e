"""The data package's error, in its lowest module so that every other one can raise it."""


class DataError(ValueError):
    """A dataset is missing, empty or unreadable; the message names the path and the fix."""
