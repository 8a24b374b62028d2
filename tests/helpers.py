"""Paths of the repository's fixtures, shared by the tests (importable: pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROMPT", "REPO", "TINY_TAR", "tiny_tar_md5"]

REPO = Path(__file__).resolve().parents[1]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
PROMPT = REPO / "data" / "prompts" / "prompt_librilight_uk_4s.wav"


def tiny_tar_md5() -> str:
    """The published md5 of the embedded corpus tar."""
    return TINY_TAR.with_suffix(".tar.md5").read_text().split()[0]
