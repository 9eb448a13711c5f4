"""Cohere Chat v2 wire format, on the provider side only."""
