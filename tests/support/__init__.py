"""Test support: real hubs on loopback, kernel execution, failure-injecting backends."""
