"""`edgegen serve`: an OpenAI-compatible local server (being written)."""
