"""JobserverExecutor: a concurrent.futures drop-in built on jobserver-core."""
