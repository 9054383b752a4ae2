"""Graphs: access, provisioning and the graph endpoints."""
