"""vizoo backbones. Importing this package registers every family with timm."""

from vizoo.backbones import inline_cswin, inline_deit, inline_pvt, inline_swin, nat, overlock  # noqa: F401
