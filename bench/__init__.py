"""Veil's benchmarks (issue 6): ratios measured side by side in one run, each against its bar.

``python -m bench`` runs them all; ``python -m bench.<name>`` runs one. Not part of the tests.
See docs/PERFORMANCE.md for the figures and how they were taken.
"""
