"""MLX runtime (Metal on Apple silicon, CPU elsewhere)."""
