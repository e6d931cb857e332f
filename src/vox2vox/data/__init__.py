"""data subpackage (see ARCHITECTURE.md)."""
