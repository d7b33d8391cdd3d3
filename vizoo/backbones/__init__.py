"""vizoo backbones. Importing this package registers every family with timm."""

from vizoo.backbones import nat  # noqa: F401
