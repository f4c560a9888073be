"""desilab.projects.anomalies."""
