"""Provider adapters: the ChatProvider Protocol, the registry, and one module per provider."""
