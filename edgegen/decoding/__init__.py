"""Decoding strategies. They see only the protocols in `edgegen.core`, never a backend."""
