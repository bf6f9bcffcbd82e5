"""Data: tokens, the activation cache, the activation stream, which positions count."""
