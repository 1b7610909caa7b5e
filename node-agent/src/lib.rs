//! Node agent (kubelet-like): runs pods with runc, CNI networking and OCI images, talking only to the API server. Not built yet.
