"""Runtimes execute converted models behind the `edgegen.core` protocols."""
