"""sparsec: compiles pattern-pruned CNNs (ONNX + pruning masks) into fast TVM code.

    model = sparsec.compile("model.onnx", masks="masks.npz")   # -> CompiledModel
    outputs = model.run({"input": x}); model.export("model.so")
    again = sparsec.load("model.so")
"""

__version__ = "0.1.0"


def compile(model, masks=None, **options):  # noqa: A001 - the verb users expect
    """See `sparsec.driver.compile`."""
    from sparsec.driver import compile as compile_model

    return compile_model(model, masks, **options)


def load(path):
    """See `sparsec.driver.load`."""
    from sparsec.driver import load as load_model

    return load_model(path)
