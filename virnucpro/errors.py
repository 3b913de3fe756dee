"""The two exceptions a user's mistake becomes: each is one clear line on the terminal."""
from __future__ import annotations


class InputError(Exception):
    """A problem with the user's input or files, reported as one clear line."""


class DimensionError(InputError):
    """A feature vector whose length is not the one the pipeline expects."""

    def __init__(self, expected, actual, sequence_id, location):
        self.expected, self.actual, self.sequence_id, self.location = expected, actual, sequence_id, location
        super().__init__(f"{location}: expected a {expected}-value feature vector for '{sequence_id}', "
                         f"got {actual}; the features come from another model than this pipeline's")
