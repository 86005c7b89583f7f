"""Subcommands of the `spacetime` command line: one module each, with add_arguments(parser) and run(args)."""
