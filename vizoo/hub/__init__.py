"""vizoo.hub."""
