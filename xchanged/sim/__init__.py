"""Deterministic simulator: many protocol Nodes on a virtual clock and an in-memory network."""
