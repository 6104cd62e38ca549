"""The codec's single error type."""


class CodecError(ValueError):
    """Any bad codec input: an invalid ``CodecConfig`` field, or a payload that is
    truncated, corrupt, hostile or of an unknown version. The message says what was
    wrong and, where it helps, what is allowed."""
