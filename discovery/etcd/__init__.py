"""Replicas on etcd: the shared store, membership and ownership, liveness write-through."""
