"""Activation families of the per-layer dictionaries: one module each (relu, topk,
batchtopk, jumprelu), holding the family's forward and hand-written backward."""
