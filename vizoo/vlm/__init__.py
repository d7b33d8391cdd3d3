"""vizoo.vlm: training-free attention tools for Hugging Face vision-language models (needs the ``vlm`` extra).

* :func:`get_adapter`: per-family access to the language model's attention (capture and pre-softmax boost);
* :func:`carve`: CARVE, contrastive attention refinement of the image for visual question answering;
* :func:`paint`: PAINT, a context manager that boosts informative image tokens to curb hallucination;
* :mod:`vizoo.vlm.evaluate`: CHAIR and POPE.
"""
from vizoo.vlm.attention import VLMAdapter, get_adapter, supported_model_types
from vizoo.vlm.carve import CarveResult, carve
from vizoo.vlm.paint import paint

__all__ = ["CarveResult", "VLMAdapter", "carve", "get_adapter", "paint", "supported_model_types"]
