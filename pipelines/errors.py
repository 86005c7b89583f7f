"""The one exception type that the command line turns into a one-line message and exit code 2.

Library code raises `UserError` (or `ValueError` / `FileNotFoundError` for argument checks) with a
message that names the file or value at fault and says what would work. The `spacetime` command
prints that message on one line and exits with status 2; `--debug` shows the traceback instead.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, an unreadable video, a size the model can't take."""


EXIT_USER_ERROR = 2
