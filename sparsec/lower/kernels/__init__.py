"""TIR kernel generators, one module per kind of op."""
