"""desilab.projects.outflows."""
