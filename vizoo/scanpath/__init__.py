"""vizoo.scanpath."""
