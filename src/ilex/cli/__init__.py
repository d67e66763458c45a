"""The `ilex` command line: register, apply, convert."""
