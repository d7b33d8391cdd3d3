"""vizoo backbones. Importing this package registers every family with timm."""
