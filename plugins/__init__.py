"""zoo's built-in model families. Each sub-package is an ordinary pluggy plugin, found through the `zoo` entry-point group."""
