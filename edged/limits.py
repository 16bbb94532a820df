"""Bounds shared by the config file and the command line: written once, read by both
(`edged.config` validates files with them, `edged.cli` its options). A light module: the CLI
imports it before anything heavy."""

from __future__ import annotations

THREADS = (1, 64)  # interpreter CPU threads
MAX_DETECTIONS = (1, 10_000)  # detections kept per frame
