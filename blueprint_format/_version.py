"""The one place that names the package version and the spec version it implements."""

__version__ = "0.1.0"

#: The spec version this implementation writes.
SPEC_VERSION = "1.0.0"
#: The major version this reader accepts.
SUPPORTED_MAJOR = 1
#: The highest minor version of SUPPORTED_MAJOR whose members this reader knows.
SUPPORTED_MINOR = 0
