"""Stable row ids: the source's own id column, or a hash of the task and the normalized prompt."""

from __future__ import annotations

import hashlib
import unicodedata


def normalize_prompt(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split()).lower()


def prompt_id(task: str, prompt: str) -> str:
    return hashlib.sha256(f"{task}\x00{normalize_prompt(prompt)}".encode()).hexdigest()[:16]
