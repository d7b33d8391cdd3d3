"""vizoo.train."""
