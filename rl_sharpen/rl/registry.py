"""Name -> function tables for reward components, advantage estimators and losses."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def registrar(table: dict[str, F], kind: str) -> Callable[[str], Callable[[F], F]]:
    """A decorator factory: `@register(name)` puts the function in `table`, refusing duplicates."""

    def register(name: str) -> Callable[[F], F]:
        def wrap(fn: F) -> F:
            if name in table:
                raise ValueError(f"{kind} {name!r} is already registered")
            table[name] = fn
            return fn

        return wrap

    return register
