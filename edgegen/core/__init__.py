"""Backend-free contracts: protocols, the manifest and errors (numpy + stdlib only; nothing here
imports, or finds by name, a module outside `edgegen.core`)."""
