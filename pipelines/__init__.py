"""spacetime-video pipelines: video I/O, samplers, data, training and the `spacetime` command line."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("spacetime-video")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

from pipelines.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
