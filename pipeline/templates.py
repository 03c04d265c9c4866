"""Jinja prompt templates from `prompts/`: rendering, and hashes that go into fingerprints.

Every prompt the pipeline sends (system prompts, task phrasings, critic rubric, regeneration and
self-distillation instructions) is a file in `prompts/`, so changing one changes the fingerprint of the
stages that use it.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path

import jinja2

from pipeline.errors import UserError


def prompts_dir() -> Path:
    return Path(os.environ.get("DISTILL_PROMPTS_DIR") or Path(__file__).resolve().parent.parent / "prompts")


@cache
def _env(root: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(root),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def exists(name: str) -> bool:
    return (prompts_dir() / name).is_file()


def render(template: str, **variables) -> str:
    """Render `prompts/<name>` with strict variables (a missing variable is an error, not an empty string)."""
    try:
        return _env(str(prompts_dir())).get_template(template).render(**variables).strip()
    except jinja2.TemplateNotFound:
        raise UserError(
            f"prompt template prompts/{template} does not exist; add it or fix the name"
        ) from None
    except jinja2.UndefinedError as e:
        raise UserError(
            f"prompt template prompts/{template} uses an unknown variable ({e.message})"
        ) from None


def template_hash(name: str) -> str:
    path = prompts_dir() / name
    if not path.is_file():
        raise UserError(f"prompt template prompts/{name} does not exist; add it or fix the name")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def template_text(name: str) -> str:
    return (prompts_dir() / name).read_text()


def render_turns(template: str, **variables) -> list[dict]:
    """Render a few-shot template into chat turns. Each turn starts with a line ``### user`` or
    ``### assistant``; the text up to the next such line is its content."""
    turns: list[dict] = []
    for line in render(template, **variables).splitlines():
        head = line.strip()
        if head in ("### user", "### assistant"):
            turns.append({"role": head[4:], "content": ""})
        elif turns:
            turns[-1]["content"] += line + "\n"
        elif head:
            raise UserError(f"prompt template prompts/{template}: text before the first '### user' line")
    for t in turns:
        t["content"] = t["content"].strip()
    roles = [t["role"] for t in turns]
    if (
        not turns
        or roles != ["user", "assistant"] * (len(turns) // 2)
        or any(not t["content"] for t in turns)
    ):
        raise UserError(
            f"prompt template prompts/{template} must hold '### user' / '### assistant' pairs, each with text"
        )
    return turns
