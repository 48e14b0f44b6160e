"""Tuning kernels on devices, the TVM shape: task -> space -> builder -> runner -> database.

- `task`: which generator a layer's kernel comes from and the structure it depends on, with a
  stable structural key (equal layers share a task across layers and models);
- `space`: a generator's knobs on a target (legal values, constraints, the default);
- `log`: the database, JSON lines, one record per measured trial, appended atomically;
- `search`: random and evolutionary (a cheap cost model) proposals;
- `tuner`: the loop over a builder and a runner (`sparsec.lower.tuning_build`, `sparsec.runtime.rpc_runner`);
- `apply`: the best record per task onto a module's ops (`knobs = {...}`).
No tvm import here: the TVM side lives in `sparsec.lower` and `sparsec.runtime`.
"""
