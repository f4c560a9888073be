"""desilab.projects.voids."""
