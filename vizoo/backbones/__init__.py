"""vizoo backbones. Importing this package registers every family with timm."""

from vizoo.backbones import nat  # noqa: F401
from vizoo.backbones import inline_pvt  # noqa: F401
from vizoo.backbones import inline_deit  # noqa: F401
from vizoo.backbones import inline_swin  # noqa: F401
from vizoo.backbones import inline_cswin  # noqa: F401
