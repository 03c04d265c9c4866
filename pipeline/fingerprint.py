"""Stage identity: the fingerprint of a stage's work and the parts it is made of.

A fingerprint is a sha256 over the canonical JSON of the parts (config, prompt template hashes, input
fingerprints, model identities, code version); see DESIGN.md. Keeping the parts, not just the hash, lets a
mismatch name the field that changed (`differing_fields`). The store (pipeline/store.py) keeps them in each
stage's progress record and manifest.
"""

from __future__ import annotations

import hashlib
import json
import re

# How the work is cut into shards does not change the result, so these config keys are not part of identity.
EXECUTION_KEYS = ("shard_size",)
# A key is secret when its last word is one of these (api_key, hf_token; not max_tokens or api_key_env).
SECRET_KEY = re.compile(r"(^|_)(key|token|secret|password|apikey)$", re.IGNORECASE)


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_of(parts: dict) -> str:
    return sha256_text(canonical_json(identity_of(parts)))


def identity_of(parts: dict) -> dict:
    """What a fingerprint covers: the parts, with each input known by its fingerprint, not by its path (a
    run folder that is moved or copied keeps its identity; manifests still record the paths)."""
    inputs = parts.get("inputs")
    if not isinstance(inputs, list):
        return parts
    return {
        **parts,
        "inputs": [{k: v for k, v in i.items() if k != "path"} if isinstance(i, dict) else i for i in inputs],
    }


def same_identity(a: dict, b: dict) -> bool:
    """Whether two sets of fingerprint parts name the same work (also for manifests written when the
    fingerprint still covered input paths)."""
    return canonical_json(identity_of(a)) == canonical_json(identity_of(b))


def differing_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the fingerprint parts that differ, e.g. ['config.temperature']."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_fields(a, b, path + ".")
        elif canonical_json(a) != canonical_json(b):
            out.append(path)
    return out


def redact(obj):
    """Drop values of keys that look like secrets (api keys, tokens) before they reach a manifest."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(k) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj
