"""model subpackage (see ARCHITECTURE.md)."""
