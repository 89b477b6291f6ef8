"""The HTML run report (filled in below)."""
