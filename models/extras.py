"""Optional dependencies, imported where a feature needs them, with a one-line message naming
the extra that installs them (`pip install 'codecflow[mimi]'`).

The core install (`pip install codecflow`) holds the dataset reader, the torch datasets, the
layouts, mu-law and the RVQ codec; Mimi (moshi), resampling and the mel loss (torchaudio), the
flows (Prefect) and the speech metrics come with extras. Pure Python: importlib only.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """A feature's optional dependency is not installed; the message says which extra adds it."""


def require(module: str, feature: str, extra: str) -> ModuleType:
    """Import `module` for `feature`, or raise MissingExtraError naming `extra`.

    >>> require("moshi.models.loaders", "Mimi", "mimi")  # doctest: +SKIP
    MissingExtraError: Mimi needs the mimi extra: pip install 'codecflow[mimi]'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        # Only the package itself missing means "install the extra"; a module it fails to find
        # inside (a broken install) is reported as it is.
        if missing.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(
            f"{feature} needs the {extra} extra: pip install 'codecflow[{extra}]'"
        ) from None
