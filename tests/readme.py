"""The README's Python blocks, for the tests that run them."""

import os
import re

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def blocks() -> list[str]:
    """Every Python block of the README, in order."""
    with open(README, encoding="utf-8") as file:
        return _BLOCK.findall(file.read())


def block(after: str) -> str:
    """The first Python block of the README that follows `after`."""
    with open(README, encoding="utf-8") as file:
        text = file.read()
    return _BLOCK.search(text, text.index(after)).group(1)


def shortened(code: str, replacements: dict[str, str]) -> str:
    """`code` with each budget of `replacements` cut (`old -> new`); a
    budget the block no longer holds fails, so the test follows it."""
    for old, new in replacements.items():
        assert code.count(old) == 1, f"{old!r} is not once in:\n{code}"
        code = code.replace(old, new)
    return code
