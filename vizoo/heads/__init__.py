"""vizoo.heads."""
