"""`edgegen serve` (being written)."""
