"""Where the registry's state becomes durable: one narrow interface (`base.Store`) and its
implementations (`memory`: nothing outlives the process)."""
