"""Report-wide image assets under a size budget."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AssetStore"]

DEFAULT_BUDGET_BYTES = 20 * 1024 * 1024


@dataclass
class AssetStore:
    """Collects data-URI assets; once ``budget_bytes`` is reached further assets are dropped.

    Dropped assets are counted and their ids listed, so templates show "omitted (size budget)"
    instead of a broken image.
    """

    budget_bytes: int = DEFAULT_BUDGET_BYTES
    assets: dict[str, str] = field(default_factory=dict)
    used_bytes: int = 0
    dropped: list[str] = field(default_factory=list)

    def add(self, key: str, uri: str) -> bool:
        """Add asset ``key``; returns False (and records it) when over budget."""
        if key in self.assets:
            raise ValueError(f"duplicate asset id {key!r}")
        size = len(uri)
        if self.used_bytes + size > self.budget_bytes:
            self.dropped.append(key)
            return False
        self.assets[key] = uri
        self.used_bytes += size
        return True

    def summary(self) -> dict:
        """JSON-ready budget accounting."""
        return {"limit_bytes": self.budget_bytes, "used_bytes": self.used_bytes,
                "count": len(self.assets), "dropped": self.dropped}
