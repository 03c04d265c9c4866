"""Filters: decide per row whether it stays, and say why not.

``dedup`` and ``decontaminate`` are pure functions over lists of texts; ``steps`` wraps them (and the
verifiers) as the ordered filter steps of the verify stage. Nothing here reads or writes files.
"""
