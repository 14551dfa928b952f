"""Routing: router, local router, session manager, component manager, s2s manager."""
