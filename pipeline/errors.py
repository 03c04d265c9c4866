"""The one exception type that means "the user can fix this"; the CLI turns it into exit code 2."""


class UserError(Exception):
    """Bad input or configuration. The message is one line and names the fix."""


class RetryPending(Exception):
    """A stage ended with rows that failed for a transient reason (server errors, timeouts); rerunning it,
    or `distill retry`, redoes just those rows. Exit code 1: not the user's input."""
