"""Benchmark tools: a relay-agnostic NIP-01 load generator and peer-relay helpers."""
