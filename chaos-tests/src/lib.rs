//! Jepsen-style chaos suite (nemeses, workloads, linearizability and watch checkers) run against skiff and real etcd. Not built yet.
