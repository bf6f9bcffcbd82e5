"""Cross-layer transcoders: one encoder per layer, decoders to that and every later MLP output.

- `tcspec.clt.model`: `CLTConfig`, `CLT`, `CLTLoss`, `clt_loss` (the maths and the shapes).
- `tcspec.clt.train`: `CLTTrainConfig`, `train_clt` (from the activation cache or `tcspec.stream`'s
  stream; bitwise resume).
- `tcspec.clt.step`: `train_step` (one step: hand-written gradients, Adam per parameter).
- `tcspec.clt.codes`: a layer's activations, `Dense` or `Sparse`, and their products.
- `tcspec.clt.cost`: `clt_cost` (parameters, memory and FLOPs, for the planner).
- `tcspec.clt.evaluate`: `evaluate_clt` (spliced into all its layers at once).
- `tcspec.clt.io`: tcspec's own folder (`save`, `load`) and circuit-tracer's
  (`export_circuit_tracer`, `load_circuit_tracer`).
"""
