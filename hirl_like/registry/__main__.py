"""``python -m hirl_like.registry``: every registered component, ``name [aliases] -> module:qualname``.

A ``__main__`` module of its own, so that running the listing never executes a second copy of
the registries' module (runpy would warn, and the copy's registries would be empty).
"""

import hirl_like  # noqa: F401  (imports every component module so that all entries register)
from hirl_like.registry import GLOBAL_REGISTRIES, describe_registries


def main() -> None:
    print(describe_registries(GLOBAL_REGISTRIES))


if __name__ == "__main__":
    main()
