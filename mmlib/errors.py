"""One exception type for every user-facing mistake: bad params, bad files, unknown names."""


class MmlibError(ValueError):
    """A problem with the user's input. The message names the file/field/value and what to do."""
