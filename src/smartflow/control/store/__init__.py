"""Storage of the control plane: tables, migrations, database access and encryption."""
