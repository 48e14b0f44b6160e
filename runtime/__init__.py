"""Running compiled models: load, run, time (imports tvm's runtime)."""
