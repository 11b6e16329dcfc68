"""The herd: application servers that take client locations and flood them to each other.

UCLA CS 131's "Proxy herd with asyncio", with what its report admits it lacks
(catch-up, convergence, durability) solved. See docs/herd.md.
"""
