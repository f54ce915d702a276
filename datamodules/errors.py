"""The one exception type for bad or missing dataset files."""

from utils.errors import UserError


class DatasetError(UserError):
    """A dataset is missing, incomplete or holds a bad file; the message names the file and the fix."""
