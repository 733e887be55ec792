"""Floor 6: the command line and the tools built on the library (run, compare, bench, eval)."""
