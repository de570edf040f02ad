"""The response cache: keys, policy, stored answers, stores (memory, Redis), coalescing, the layer."""
