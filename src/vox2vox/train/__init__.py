"""train subpackage (see ARCHITECTURE.md)."""
