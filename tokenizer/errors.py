"""The two exceptions of the package (both are ``ValueError``s with a one-line message)."""


class TokenizerError(ValueError):
    """A tokenizer file is missing, malformed or uses a feature we do not implement.

    The message names the file and what is wrong, on one line.
    """


class ChatFormatError(ValueError):
    """A chat cannot be rendered: unknown format, bad roles or role order, bad content."""
