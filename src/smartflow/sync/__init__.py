"""The sync protocol between the control plane and gateway instances."""
