"""The one exception type that DR1 readers raise for bad files."""

from __future__ import annotations

from pathlib import Path


class DR1FormatError(ValueError):
    """A DR1 file is missing, unreadable, truncated or not in the DR1 format.

    The message always names the file and, where known, the HDU and column,
    followed by what to do about it.

    Parameters
    ----------
    path : str or Path
        The file that is wrong.
    problem : str
        What is wrong, in plain words.
    hdu : str, optional
        EXTNAME of the HDU concerned.
    column : str, optional
        Column concerned.
    hint : str, optional
        What to do; a generic hint is used when omitted.
    """

    DEFAULT_HINT = (
        "Re-download the file from the DR1 mirror (or regenerate the mock with "
        "`desilab mock`) and run the command again."
    )

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        hdu: str | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = str(path)
        self.hdu = hdu
        self.column = column
        self.problem = problem
        self.hint = hint or self.DEFAULT_HINT
        where = [f"file {self.path}"]
        if hdu is not None:
            where.append(f"HDU {hdu}")
        if column is not None:
            where.append(f"column {column}")
        super().__init__(f"{', '.join(where)}: {problem}. {self.hint}")
