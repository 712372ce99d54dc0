"""Everything that imports pytest: options and hooks, fixtures, xdist/GPU workers, the results
reporter and the regression plugin. The entry point is `pytest_securitynet.plugin.hooks`."""
