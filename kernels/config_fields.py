"""Reading config files (``config.json``, ``params.json``): typed fields, one-line errors.

Every model package builds its frozen config from a parsed JSON dict through these
readers, so a wrong value is reported by name before any tensor is touched:

    int_field(d, "num_key_value_heads", 8)     # a missing key takes the default
    -> ConfigError: field 'num_key_value_heads' must be an integer, not '8'

JSON is typed and so are the readers: ``"8"`` is not an integer, ``"false"`` is not
a boolean, ``true`` is not an integer. A key present with ``null`` counts as
missing for the ``optional_*`` readers (transformers writes ``"head_dim": null``)
and is an error for the others. An integer is at most MAX_INT (2**31 - 1: no size,
count, window or position of a model is larger, and GGUF's own are 32-bit), so a
``sliding_window: 10**18`` or ``num_hidden_layers: 10**9`` is refused by name before
anything is sized by it.

`decoder_fields` reads the fields every decoder's ``config.json`` shares (sizes,
heads, norm epsilon, head tying, special token ids), each family passing the
defaults of the transformers class that wrote the file.
"""

from __future__ import annotations

MISSING = object()
MAX_INT = 2**31 - 1  # the largest integer a config field may hold (module docstring)


class ConfigError(ValueError):
    """A config file a model package cannot run; the message names the field."""


def _present(d: dict, key: str, default):
    if not isinstance(d, dict):
        raise ConfigError(f"expected a JSON object holding {key!r}, not {type(d).__name__}")
    value = d.get(key, default)
    if value is MISSING:
        raise ConfigError(f"missing required field {key!r}")
    if value is None:
        raise ConfigError(f"field {key!r} is null; it needs a value")
    return value


def int_field(d: dict, key: str, default=MISSING, minimum: int = 0) -> int:
    """d[key] (or `default`) as an int from `minimum` to MAX_INT, else a ConfigError naming the field."""
    value = _present(d, key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"field {key!r} must be an integer, not {_short(value)}")
    if value < minimum:
        raise ConfigError(f"field {key!r} must be >= {minimum}, not {_short(value)}")
    if value > MAX_INT:
        raise ConfigError(f"field {key!r} must be at most {MAX_INT}, not {_short(value)}")
    return value


def _short(value) -> str:
    """A value for a message: at most 40 characters of it."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def optional_int(d: dict, key: str, default: int | None = None, minimum: int = 1) -> int | None:
    """d[key] as an int >= `minimum`, or `default` when absent or null."""
    if d.get(key) is None:
        return default
    return int_field(d, key, minimum=minimum)


def float_field(d: dict, key: str, default=MISSING, positive: bool = False) -> float:
    """d[key] (or `default`) as a finite float (a JSON int is a float too)."""
    value = _present(d, key, default)
    number = float(value) if isinstance(value, float) else None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**1023:  # (a larger one is inf)
        number = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"field {key!r} must be a number, not {_short(value)}")
    if number is None or number != number or abs(number) == float("inf"):
        raise ConfigError(f"field {key!r} must be a finite number, not {_short(value)}")
    if positive and number <= 0:
        raise ConfigError(f"field {key!r} must be positive, not {value}")
    return number


def bool_field(d: dict, key: str, default=MISSING) -> bool:
    """d[key] (or `default`) as a JSON boolean (``"false"`` is a string, not a boolean)."""
    value = _present(d, key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"field {key!r} must be true or false, not {value!r}")
    return value


def str_field(d: dict, key: str, default=MISSING) -> str:
    value = _present(d, key, default)
    if not isinstance(value, str):
        raise ConfigError(f"field {key!r} must be a string, not {value!r}")
    return value


def dict_field(d: dict, key: str) -> dict:
    """d[key] as a JSON object; {} when absent or null."""
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"field {key!r} must be an object, not {value!r}")
    return value


def token_id(d: dict, key: str, default: int | None) -> int | None:
    """A special token id: an int, null, or a list of ints (the first is taken)."""
    value = d.get(key, default)
    if isinstance(value, list) and value:
        value = value[0]
    if value is None:
        return None
    return int_field({key: value}, key)


def check_multiple(config, key: str, of: str) -> None:
    """config.key must be a multiple of config.of (heads of kv heads, heads of groups), else a ConfigError."""
    n, m = getattr(config, key), getattr(config, of)
    if n % m:
        raise ConfigError(f"{key}={n} is not a multiple of {of}={m}")


def check_activation(d: dict, family: str) -> None:
    """Every family here uses SiLU; another ``hidden_act`` is refused by name."""
    act = str_field(d, "hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act={act!r} is not supported ({family} uses 'silu')")


def decoder_fields(d: dict, family: str, **defaults) -> dict:
    """The config.json fields every decoder here shares, as keyword arguments of its config.

    `defaults` gives the writing class's defaults for any of ``vocab_size``,
    ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads`` and ``max_position_embeddings``; one without a default
    is required (``missing required field 'hidden_size'``). The sizes fix every
    tensor's shape and transformers always writes them, so a family should leave
    them required: a default would surface later as a confusing shape mismatch.
    ``num_key_value_heads`` absent or null means multi-head attention; ``head_dim``
    absent or null means hidden / heads.
    """
    check_activation(d, family)
    hidden = int_field(d, "hidden_size", defaults.get("hidden_size", MISSING), minimum=1)
    heads = int_field(d, "num_attention_heads", defaults.get("num_attention_heads", MISSING), minimum=1)
    vocab = int_field(d, "vocab_size", defaults.get("vocab_size", MISSING), minimum=1)
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int_field(d, "intermediate_size", defaults.get("intermediate_size", MISSING), minimum=1),
        num_hidden_layers=int_field(d, "num_hidden_layers", defaults.get("num_hidden_layers", MISSING)),
        num_attention_heads=heads,
        num_key_value_heads=optional_int(d, "num_key_value_heads", heads),
        head_dim=optional_int(d, "head_dim", hidden // heads),
        rms_norm_eps=float_field(d, "rms_norm_eps", 1e-6, positive=True),
        tie_word_embeddings=bool_field(d, "tie_word_embeddings", False),
        max_position_embeddings=int_field(d, "max_position_embeddings",
                                          defaults.get("max_position_embeddings", MISSING), minimum=1),
        bos_token_id=check_token_id(d, "bos_token_id", 1, vocab),
        eos_token_id=check_token_id(d, "eos_token_id", 2, vocab),
    )


def check_token_id(d: dict, key: str, default: int | None, vocab_size: int) -> int | None:
    """`token_id`, which must be one of the model's ids (0..vocab_size - 1)."""
    value = token_id(d, key, default)
    if value is not None and value >= vocab_size:
        raise ConfigError(f"field {key!r} is {value}, which is not a token id of this model (vocab_size {vocab_size})")
    return value
