"""Benchmarks: ``patchaudit bench accuracy|cost --out F.json [--quick]`` (see bench/ at the top
of the repository for the report generator)."""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
