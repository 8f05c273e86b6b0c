"""Algorithm families.  Importing this package registers every algorithm."""

from . import direct, im2col, kn2row  # noqa: F401
