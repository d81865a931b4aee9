"""Names of the measure families (one module each in this package); no torch, for the CLI."""

FAMILIES = ("norms", "bartlett", "path_norm", "distance", "flatness", "sharpness", "input_grad")
