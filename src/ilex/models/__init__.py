"""Network architectures that ilex bundles can hold (see `registry`)."""
