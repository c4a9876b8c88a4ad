"""Everything that is not one architecture: checkpoints, the model registry,
generation, the chat-completions schema and server, and the `npinfer` CLI."""


class NpinferError(Exception):
    """An error a user should see as one line (bad checkpoint, bad request, ...)."""


class CheckpointError(NpinferError):
    """A checkpoint that cannot be read or run; the message names the file/tensor."""
