"""Circuit analysis through transcoders, and task studies (greater-than)."""
