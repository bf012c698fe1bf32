"""`edgegen image` (being written)."""
