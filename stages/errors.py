"""The one exception type stages raise for user mistakes; the CLI prints it without a traceback."""


class StageError(Exception):
    """A bad parameter, a missing input or an unusable artifact, with a message that says the fix."""
