"""Figures and (later) the self-contained HTML report."""
