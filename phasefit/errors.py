"""Errors raised for inputs that phase detection cannot use."""


class PhasefitError(Exception):
    """Bad input for detection: an unreadable curve file, missing columns, no baseline."""
