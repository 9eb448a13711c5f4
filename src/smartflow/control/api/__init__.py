"""HTTP API of the control plane: operations, OpenAPI description and the sync stream."""
