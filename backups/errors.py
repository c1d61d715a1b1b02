"""The error every backup service raises when it cannot do what was asked."""


class BackupError(Exception):
    """A backup, copy or catalog change could not be done; the message is for the operator."""
