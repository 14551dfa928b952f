"""External components (XEP-0114): the balancing math, the stream core, the trio edge."""
