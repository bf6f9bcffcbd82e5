"""Sparse dictionaries: per-layer coders (transcoders, skip transcoders, SAEs) and
cross-layer transcoders, and their files."""
