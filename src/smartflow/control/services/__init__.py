"""Services of the control plane; the API routes are thin wrappers over them."""
