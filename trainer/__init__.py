"""trainer: the biography world, sampling schedules, the model and the training loop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phasefit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
