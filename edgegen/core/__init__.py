"""Backend-free contracts: protocols, the manifest, errors and the registry (numpy + stdlib only)."""
