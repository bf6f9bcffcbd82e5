"""Evaluation: dictionaries spliced into the model, the metrics, ground truth, probing."""
