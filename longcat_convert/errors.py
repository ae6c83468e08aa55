"""Error types the CLI maps to exit codes (see cli.py)."""


class BadInput(Exception):
    """Bad input or usage: a one-line message naming the file/key and what to do. Exit 2."""


class VerificationFailed(Exception):
    """A check ran and the result is wrong (verify mismatch, tolerance exceeded). Exit 1."""
