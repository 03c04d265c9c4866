"""The one exception type that means "the user can fix this"; the CLI turns it into exit code 2."""


class UserError(Exception):
    """Bad input or configuration. The message is one line and names the fix."""
