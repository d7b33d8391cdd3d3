"""GPU benchmark of vizoo.vlm on a random-initialised LLaVA-1.5-7B-sized model (bf16): plain ``generate``
(sdpa and eager), PAINT (released setting, and the boost alone with gamma = 0), CARVE with the KV cache, CARVE
uncached (``use_cache=False``: the whole sequence per token, only the chosen rows kept) and the official code's
loop (the whole sequence per token with ``output_attentions=True``); latency (median of
``--repeats`` runs after a warm-up) and peak GPU memory, for one 336 px image and a ``--new-tokens`` answer.

    python tools/bench_vlm.py --out bench_vlm.json            # on the GPU (about 14 GB of weights)
    python tools/bench_vlm.py --compile --out bench_vlm.json  # and CARVE with a compiled decode step
    python tools/bench_vlm.py --cases carve_cached,carve_official_style,carve_cached_compiled  # a subset
    python tools/bench_vlm.py --size tiny --device cpu         # a smoke run of the script itself

Each case also reports the language model's forward passes in its (counted) warm-up run: how many, how many
covered more than one position (prompt or whole-sequence passes), and the positions processed.

Random weights never emit EOS here (it is unset), so every generation runs the full ``--new-tokens``; the
numbers are timing and memory only. Needs transformers (the ``vlm`` extra).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

from vizoo.utils import atomic_write_text


def build(size: str, device: str, dtype: torch.dtype, tiny_layers: int = 4):
    """(model, processor): LLaVA-1.5-7B shapes (CLIP ViT-L/14-336 + Llama-2-7B) or a tiny one (``tiny_layers``
    decoder layers of width 32: on a CPU it times the host's work per layer and step), random weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    if size == "7b":
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    else:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=28, patch_size=7, projection_dim=32)
        text = LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=tiny_layers,
                           num_attention_heads=4, num_key_value_heads=4)
    text.pad_token_id, text.bos_token_id, text.eos_token_id = 0, 1, 2
    side = vision.image_size // vision.patch_size
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                         image_seq_length=side * side, vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    assert model.dtype == dtype, model.dtype
    # a word-level tokenizer with LLaVA's special ids: prompt words map to ids below 32000
    words = ("user assistant what is in the image answer question using a single word or phrase write general "
             "description of please help me describe detail").split()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: 3 + i for i, w in enumerate(words)}, "<image>": 32000}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<image>", "<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<unk>")
    image_processor = CLIPImageProcessor(size={"shortest_edge": vision.image_size},
                                         crop_size={"height": vision.image_size, "width": vision.image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return model, processor


class Counter:
    """Counts the language model's forward passes during one run: how many, how many of them cover more than
    one position (prompt or whole-sequence passes), and the positions processed (batch rows x length)."""

    def __init__(self, model):
        self.layer = model.model.language_model.layers[0]

    def __enter__(self):
        self.forwards = self.multi = self.positions = 0
        self.handle = self.layer.register_forward_pre_hook(self.hook, with_kwargs=True)
        return self

    def hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.forwards += 1
        self.multi += int(hidden.shape[1] > 1)
        self.positions += hidden.shape[0] * hidden.shape[1]

    def __exit__(self, *exc):
        self.handle.remove()


def host_profile(fn, device: str) -> dict:
    """One call of ``fn`` under ``torch.profiler``: wall seconds, the GPU's summed kernel time, kernel launches,
    dispatched aten operations and host-device synchronisations (a decode step bound by the host shows GPU time
    far below wall time, and each extra operation or sync per step adds to the wall)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = [e for e in events if e.device_time_total > 0 and e.key.startswith(("void", "triton", "_", "ampere",
                                                                                   "sm90", "cutlass", "flash"))]
    syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                     "cudaEventSynchronize"))
    copies = sum(e.count for e in events if e.key.startswith("cudaMemcpy"))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {"wall_s": wall, "gpu_kernel_s": sum(e.device_time_total for e in kernels) / 1e6,
            "kernel_launches": sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                        "cudaLaunchKernelExC")),
            "aten_ops": sum(e.count for e in events if e.key.startswith("aten::")),
            "syncs": syncs, "memcpy_calls": copies,
            "top_self_cpu": [(e.key, e.count, round(e.self_cpu_time_total / 1e3, 2)) for e in top]}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_all(cases: dict, device: str, repeats: int, model, profile: bool = False) -> dict:
    """Time every case, the repeats interleaved (case A, B, C, A, B, C, ...) so that a drift of the machine's
    speed during the run (host clocks, a neighbour's load) falls on all cases alike rather than on the later
    ones; each case's ``setup`` (outside the timer) runs before each of its calls.

    ``cases``: name -> (fn, setup or None, warmups, counted). A counted case's last warm-up counts the language
    model's forward passes. Returns name -> median seconds, all seconds, peak GPU memory of its calls, counts,
    and with ``profile`` one more profiled call."""
    results, failed = {}, {}
    for name, (fn, setup, warmups, counted) in cases.items():
        results[name] = {"all_seconds": [], "peak_gib": 0.0 if device.startswith("cuda") else float("nan")}
        try:  # an experimental case (the compiled one) that fails should not lose the others
            if setup:
                setup()
            for _ in range(warmups - 1):  # compiled cases: the first calls compile
                fn()
            if counted:
                with Counter(model) as counter:
                    fn()  # the last warm-up, counted
                results[name].update(lm_forwards=counter.forwards, lm_multi_position_forwards=counter.multi,
                                     lm_positions=counter.positions)
            else:
                fn()
        except Exception as error:  # noqa: BLE001
            print(f"{name} failed: {type(error).__name__}: {error}", file=sys.stderr)
            failed[f"{name}_error"] = f"{type(error).__name__}: {error}"
            del results[name]
    cases = {name: case for name, case in cases.items() if name in results}
    for _ in range(repeats):
        for name, (fn, setup, _, _) in cases.items():
            if setup:
                setup()
            _sync(device)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            fn()
            _sync(device)
            results[name]["all_seconds"].append(time.perf_counter() - start)
            if device.startswith("cuda"):
                results[name]["peak_gib"] = max(results[name]["peak_gib"], torch.cuda.max_memory_allocated() / 2**30)
    for name, (fn, setup, _, _) in cases.items():
        results[name]["seconds"] = statistics.median(results[name]["all_seconds"])
        if profile:
            if setup:
                setup()
            results[name]["profile"] = host_profile(fn, device)
    return {**results, **failed}


CASES = ("generate_sdpa", "generate_eager", "paint", "paint_boost_only", "carve_cached", "carve_uncached",
         "carve_official_style", "carve_cached_compiled")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="7b", choices=("7b", "tiny"))
    parser.add_argument("--tiny-layers", type=int, default=4, help="decoder layers of --size tiny (32: the 7B depth)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one more call per case: GPU kernel time against wall time, kernel "
                             "launches, aten operations, host-device syncs, the top operations by host time")
    parser.add_argument("--compile", action="store_true",
                        help="also time CARVE with compile=True (static cache; on a GPU a compiled decode step with "
                             "CUDA graphs: the warm-up compiles, which takes minutes at 7B size)")
    parser.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)} (generate_sdpa, the "
                                        "reference, always runs)")
    args = parser.parse_args(argv)
    wanted = set(CASES[:-1] if not args.compile else CASES) if args.cases is None else set(args.cases.split(","))
    if wanted - set(CASES):
        parser.error(f"unknown --cases {sorted(wanted - set(CASES))}; known: {', '.join(CASES)}")
    wanted.add("generate_sdpa")

    from vizoo.vlm import carve, get_adapter, paint
    from vizoo.vlm.attention import ATTENTION_NAME
    from vizoo.vlm.carve import GENERAL_INSTRUCTION, TASK_SUFFIX, generate_greedy, greedy_config

    model, processor = build(args.size, args.device, getattr(torch, args.dtype), args.tiny_layers)
    side = model.config.vision_config.image_size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side + 64, side, 3), dtype=np.uint8))
    question = "what is in the image ?"
    config = greedy_config(model, args.new_tokens)
    prompt = "USER: <image>\n" + question + TASK_SUFFIX + " ASSISTANT:"
    batch = processor(images=[image], text=[prompt], return_tensors="pt")
    inputs = {k: v.to(args.device, model.dtype) if v.is_floating_point() else v.to(args.device)
              for k, v in batch.items()}
    layers = list(range(20, 26)) if args.size == "7b" else [1, 2, 3]

    @torch.no_grad()
    def plain():
        out = model.generate(**inputs, generation_config=config)
        assert out.shape[1] == inputs["input_ids"].shape[1] + args.new_tokens

    results = {"config": vars(args), "prompt_tokens": int(inputs["input_ids"].shape[1]),
               "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "transformers": __import__("transformers").__version__, "torch": torch.__version__}
    cases = {}

    def add(name: str, fn, setup=None, warmups: int = 1, counted: bool = True) -> None:
        if name in wanted:
            cases[name] = (fn, setup, warmups, counted)

    model.set_attn_implementation({"text_config": "sdpa"})
    adapter = get_adapter(model)  # the language model now runs vizoo's eager attention

    def sdpa():
        model.set_attn_implementation({"text_config": "sdpa"})

    def vizoo_eager():
        model.set_attn_implementation({"text_config": ATTENTION_NAME})

    add("generate_sdpa", plain, sdpa)
    add("generate_eager", plain, vizoo_eager)

    def painted():
        with paint(model, processor):
            plain()

    def boost_only():
        with paint(model, processor, gamma=0.0):
            plain()

    def carved(**options):
        return lambda: carve(model, processor, image, question, layers=layers, max_new_tokens=args.new_tokens,
                             **options)

    add("paint", painted, vizoo_eager)
    add("paint_boost_only", boost_only, vizoo_eager)
    add("carve_cached", carved(), vizoo_eager)
    add("carve_uncached", carved(use_cache=False), vizoo_eager)

    @torch.no_grad()
    def official_style():
        """The official code's loop: every token reruns the whole sequence with output_attentions=True (all
        layers' full matrices), then the same final cached answer; the mask steps (CPU, milliseconds) left out."""
        for text in (question + TASK_SUFFIX, GENERAL_INSTRUCTION + TASK_SUFFIX):
            step = adapter.inputs(processor, [image], text)
            positions = adapter.grid_positions(step)
            for _ in range(args.new_tokens):
                out = model(**step, use_cache=False, output_attentions=True)
                maps = [out.attentions[layer][0, :, -1, positions].float().mean(0) for layer in layers]
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                step["input_ids"] = torch.cat([step["input_ids"], token], 1)
                step["attention_mask"] = torch.cat([step["attention_mask"], torch.ones_like(token)], 1)
            del out, maps
        final = adapter.inputs(processor, [image, image], question + TASK_SUFFIX)
        generate_greedy(model, final, args.new_tokens)

    add("carve_official_style", official_style, vizoo_eager)
    # not counted (a hook inside the compiled step would recompile it); three warm-ups: transformers compiles
    # the batch-2 prompt step, the batch-1 answer step, then once more with dynamic shapes
    add("carve_cached_compiled", carved(compile=True), vizoo_eager, warmups=3, counted=False)
    results.update(measure_all(cases, args.device, args.repeats, model, args.profile))
    base = results["generate_sdpa"]["seconds"]
    print("| case | seconds | x plain sdpa | peak GiB | LM forwards (multi-position) | LM positions |\n"
          "|---|---|---|---|---|---|")
    for name in (name for name in CASES if name in results):
        r = results[name]
        counts = (f"{r['lm_forwards']} ({r['lm_multi_position_forwards']}) | {r['lm_positions']}"
                  if "lm_forwards" in r else "- | -")
        print(f"| {name} | {r['seconds']:.3f} | {r['seconds'] / base:.2f} | {r['peak_gib']:.1f} | {counts} |")
    if args.profile:
        print("\n| case | wall s | GPU kernel s | kernel launches | aten ops | syncs | memcpy calls |\n"
              "|---|---|---|---|---|---|---|")
        for name in (name for name in CASES if "profile" in results.get(name, {})):
            p = results[name]["profile"]
            print(f"| {name} | {p['wall_s']:.3f} | {p['gpu_kernel_s']:.3f} | {p['kernel_launches']} | "
                  f"{p['aten_ops']} | {p['syncs']} | {p['memcpy_calls']} |")
        for name in (name for name in CASES if "profile" in results.get(name, {})):
            print(f"{name}: top host time (op, calls, ms): {results[name]['profile']['top_self_cpu']}")
    seconds = {name: r["seconds"] for name, r in results.items() if isinstance(r, dict) and "seconds" in r}
    if "paint" in seconds:
        print(f"PAINT / plain sdpa: {seconds['paint'] / base:.2f} (target <= 1.2)")
    for slow, fast in (("carve_official_style", "carve_cached"), ("carve_uncached", "carve_cached"),
                       ("carve_official_style", "carve_cached_compiled")):
        if slow in seconds and fast in seconds:
            print(f"CARVE {slow} / {fast}: {seconds[slow] / seconds[fast]:.2f} (target >= 3)")
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
