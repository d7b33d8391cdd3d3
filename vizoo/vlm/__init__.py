"""vizoo.vlm."""
