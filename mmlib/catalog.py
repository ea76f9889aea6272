"""A catalog of named cards (models, extractors, dataset sources): each registered once, looked up
by name, with the closest known name suggested on a typo. Torch-free, so studies are checked and
`mmlib list` answers without the heavy libraries."""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from mmlib.errors import MmlibError

C = TypeVar("C")


class Catalog(Generic[C]):
    def __init__(self, kind: str, listing: str = "", cards=()):
        self.kind, self.listing = kind, listing  # listing: how a user lists them, for the message
        self._cards: dict[str, C] = {}
        for card in cards:
            self.register(card)

    def register(self, card: C) -> C:
        if card.name in self._cards:
            raise MmlibError(f"{self.kind} card {card.name!r} registered twice.")
        self._cards[card.name] = card
        return card

    def unregister(self, name: str) -> None:
        """Remove a card (tests that register a model of their own leave the catalog as it was)."""
        del self._cards[name]

    def names(self) -> list[str]:
        return sorted(self._cards)

    def get(self, name: str, where: str | None = None) -> C:
        if name not in self._cards:
            close = difflib.get_close_matches(str(name), self._cards, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(self.names()) + (f" ({self.listing})" if self.listing else "")
            unknown = f"{where}: unknown" if where else "Unknown"
            raise MmlibError(f"{unknown} {self.kind} {name!r}.{hint} Known: {known}.")
        return self._cards[name]
