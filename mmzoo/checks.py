"""Small helpers every part of mmzoo shares: argument checks with one
message format, and configurations as plain data."""

import difflib


def check_choice(argument, value, choices):
    """Raise a ValueError naming the valid choices and the closest matches.

    Example:

    >>> check_choice("fusion", "gated", ["concat", "gated"])
    >>> check_choice("fusion", "gatd", ["concat", "gated"])
    Traceback (most recent call last):
    ...
    ValueError: `fusion` must be one of ['concat', 'gated']. Received:
    fusion='gatd'. Did you mean 'gated'?
    """
    try:
        if value in choices:
            return
    except TypeError:  # an unhashable value is in no table
        pass
    message = (
        f"`{argument}` must be one of {sorted(choices, key=str)}. "
        f"Received: {argument}={value!r}."
    )
    if isinstance(value, str):
        names = [choice for choice in choices if isinstance(choice, str)]
        close = difflib.get_close_matches(value, names, n=3, cutoff=0.6)
        if close:
            message += " Did you mean " + " or ".join(map(repr, close)) + "?"
    raise ValueError(message)


def plain_data(value):
    """A JSON- and YAML-ready copy: tuples become lists, dicts are copied.

    Example:

    >>> plain_data({"image_filters": (16, 32), "name": None})
    {'image_filters': [16, 32], 'name': None}
    """
    if isinstance(value, dict):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    return value
