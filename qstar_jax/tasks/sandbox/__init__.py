"""The code sandbox: each program in a fresh interpreter, in its own process group, with
limits, no network and a scratch directory (``sandbox.run_program`` is the entry point)."""
