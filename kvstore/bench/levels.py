"""Consistency levels as the benchmark names them: `ONE`, `QUORUM`, or `READ/WRITE` pairs."""

from __future__ import annotations

from dataclasses import dataclass

NAMES = ("ONE", "TWO", "THREE", "QUORUM", "ALL")


def replicas(name: str, n: int) -> int:
    """How many replicas level `name` waits for when the replication factor is `n`."""
    fixed = {"ONE": 1, "TWO": 2, "THREE": 3}
    if name in fixed:
        return min(fixed[name], n)
    if name == "QUORUM":
        return n // 2 + 1
    if name == "ALL":
        return n
    raise ValueError(f"unknown consistency level {name!r}; use one of {', '.join(NAMES)}")


@dataclass(frozen=True)
class Level:
    """Read and write consistency of one benchmark run (the same unless given as R/W)."""

    read: str
    write: str

    @classmethod
    def parse(cls, text: str) -> Level:
        parts = [p.strip().upper() for p in text.split("/")]
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or any(p not in NAMES for p in parts):
            raise ValueError(f"bad consistency level {text!r}: use a level ({', '.join(NAMES)}) "
                             "or READ/WRITE such as ONE/ALL")
        return cls(parts[0], parts[1])

    @property
    def name(self) -> str:
        return self.read if self.read == self.write else f"{self.read}/{self.write}"

    def counts(self, n: int) -> tuple[int, int]:
        return replicas(self.read, n), replicas(self.write, n)

    def overlapping(self, n: int) -> bool:
        """R + W > N: every read quorum meets every write quorum (read-your-writes)."""
        r, w = self.counts(n)
        return r + w > n


def parse_levels(text: str | list[str]) -> list[Level]:
    items = text.split(",") if isinstance(text, str) else list(text)
    levels = [Level.parse(item) for item in items if item.strip()]
    if not levels:
        raise ValueError("no consistency levels given")
    return levels


def parse_duration(text: str | float | int) -> float:
    """'30s', '2m', '1h', '500ms' or plain seconds -> seconds."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        t = text.strip().lower()
        number, scale = t, 1.0
        for suffix, unit in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
            if t.endswith(suffix):
                number, scale = t[: -len(suffix)], unit
                break
        try:
            value = float(number) * scale
        except ValueError:
            raise ValueError(f"bad duration {text!r}; use e.g. 30s, 2m, 500ms") from None
    if value < 0:
        raise ValueError(f"duration must not be negative: {text!r}")
    return value
