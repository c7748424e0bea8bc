"""The command line, the one-machine stack (embedded Postgres, folder bucket) and the demo:
the top of the import graph, the only package that imports every other."""
