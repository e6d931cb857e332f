"""infer subpackage (see ARCHITECTURE.md)."""
