"""Language models: the toy recipe and its corpus and tokenizer, and loading of pretrained
and checkpoint models into TransformerLens."""
