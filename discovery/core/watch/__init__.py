"""Watching the registry: the hub (`hub`), one bounded queue per watcher (`queue`), and the
protocol-neutral events and messages they hand to the adapters (`events`)."""
