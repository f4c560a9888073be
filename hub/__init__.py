"""desilab.hub."""
