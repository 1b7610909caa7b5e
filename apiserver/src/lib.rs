//! Kubernetes-compatible API server (REST + gRPC automation API) keeping objects in the store through the etcd v3 API. Not built yet: see ROADMAP.
