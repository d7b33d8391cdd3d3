"""vizoo.data."""
