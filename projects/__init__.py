"""desilab.projects."""
