"""The data types every reader returns: an example, a rejected row, a file's load report, a table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path



# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One text (or text pair) to classify, with its label and the row it came from."""

    text: str
    label: str | None
    text_pair: str | None = None
    row: int = 0


@dataclass(frozen=True)
class Rejection:
    """A row that could not be used, and why."""

    row: int
    reason: str


@dataclass
class LoadReport:
    """What reading a file did: format, encoding, columns, and an account of every row."""

    path: str
    format: str
    encoding: str
    columns: list[str]
    text_column: str
    pair_column: str | None
    label_column: str | None
    rows_read: int
    rows_used: int
    rejected: list[Rejection] = field(default_factory=list)

    def summary(self) -> str:
        """One human line, e.g. ``tweets.csv: 38158 rows read, 38150 used, 8 rejected (row 17: empty text; ...)``."""
        name = Path(self.path).name or self.path
        line = f"{name}: {self.rows_read} rows read, {self.rows_used} used, {len(self.rejected)} rejected"
        if self.rejected:
            shown = "; ".join(f"row {r.row}: {r.reason}" for r in self.rejected[:3])
            more = "; ..." if len(self.rejected) > 3 else ""
            line += f" ({shown}{more})"
        if not self.encoding.startswith("utf-8") and self.format != "list":
            line += f"; encoding {self.encoding}"
        return line


@dataclass
class DedupeReport:
    """What :func:`deduplicate` removed."""

    rows_in: int
    rows_out: int
    duplicates_removed: int  # later copies of a text whose copies all agree on the label
    conflicting_texts: int  # distinct texts whose copies disagree on the label
    conflicting_rows_removed: int  # every copy of those texts

    def summary(self) -> str:
        """One human line."""
        return (
            f"{self.rows_in} rows, {self.rows_out} kept: {self.duplicates_removed} duplicates removed, "
            f"{self.conflicting_texts} texts with conflicting labels "
            f"({self.conflicting_rows_removed} rows) removed"
        )


@dataclass
class Table:
    """A data file as raw rows (every column, file order), for writing predictions alongside."""

    path: str
    format: str
    columns: list[str]
    rows: list[dict[str, object]]
    encoding: str = "utf-8"
    row_numbers: list[int] = field(default_factory=list)
    header: bool = True  # False: the file had no header row; columns are positions (column_1 ...) or --columns
