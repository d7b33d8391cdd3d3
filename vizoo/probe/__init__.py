"""vizoo.probe."""
