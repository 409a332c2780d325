"""Errors raised for stores that cannot be read or written."""


class StoreError(Exception):
    """A store is missing, malformed, of an unknown schema version, or corrupted.

    The message names the run (its path) and, where it applies, the array at fault.
    """
