"""vizoo backbones. Importing this package registers every family with timm."""

from vizoo.backbones import nat  # noqa: F401
from vizoo.backbones import inline_deit, inline_pvt, inline_swin, inline_cswin  # noqa: F401
from vizoo.backbones import overlock  # noqa: F401
