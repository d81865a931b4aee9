"""The measure families: `MEASURES` (filled by `@MEASURES.register("name")` on each family's
`compute(ctx)`) and `FAMILIES`, their names in column order; no torch, for the CLI.

`FAMILIES` is the one line to extend besides the family's file: it orders the columns, and
`advmem analyze measures --help` lists it without importing the families (they import torch).
tests/test_measures.py checks that it names exactly the registered families.
"""

from advmem.registry import Registry, import_package

MEASURES = Registry("measure family", load=import_package("advmem.analysis.measures"))

FAMILIES = ("norms", "bartlett", "path_norm", "distance", "flatness", "sharpness", "input_grad")
