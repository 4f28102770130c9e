"""Where the registry's state becomes durable: one narrow interface (`base.Store`) and its
implementations (`memory`: nothing outlives the process; `sqlite`: one SQLite file, written by
a thread with group commit). `location.store_at` turns `SERVICE_DISCOVERY_STORE` into one."""
