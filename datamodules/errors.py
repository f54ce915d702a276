"""The one exception type for bad or missing dataset files."""


class DatasetError(ValueError):
    """A dataset is missing, incomplete or holds a bad file; the message names the file and the fix."""
