"""User-facing errors: one line naming the file or field and the fix; the CLI turns them into exit code 2."""


class KmimError(Exception):
    """An input or configuration problem the user can fix. Its message is printed as one line."""
