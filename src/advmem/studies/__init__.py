"""Study commands: multi-run experiments that end in a folder of figures, tables and a README."""
