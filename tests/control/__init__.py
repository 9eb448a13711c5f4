"""Tests of the control plane and the sync protocol."""
