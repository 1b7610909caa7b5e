//! Controller manager (deployments, replicasets, endpoints, ...), level-triggered reconcilers talking only to the API server. Not built yet.
