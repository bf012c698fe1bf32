"""`edgegen bench` (being written)."""
