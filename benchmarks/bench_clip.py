"""CPU throughput of clip-vit-b32 image and text embeddings: zoo against transformers and open_clip, same run.

One set of random weights (transformers' CLIPModel with the real openai/clip-vit-base-patch32 config) is saved in
the Hub layout and loaded by zoo; open_clip's ``ViT-B-32-quickgelu`` gets the same tensors, renamed with zoo's
own open_clip table run backwards. Each library embeds a batch of 32 (images: preprocessed 224x224 tensors; text:
32 ImageNet prompts), in rounds that alternate between the libraries so that load from other processes spreads
evenly; the fastest round of each is reported (the one least disturbed by other processes). Text is timed from
token ids (each library's own tokenizer output) and, in the last row, from strings.

    OMP_NUM_THREADS=1 python benchmarks/bench_clip.py [--threads 1] [--rounds 5] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "openai__clip-vit-base-patch32"


def _hf_repo(out: Path):
    import open_clip
    import transformers
    from zoo.plugins.clip.bpe import CLIPTokenizer
    cfg = json.loads((CHECKPOINT / "config.json").read_text())
    torch.manual_seed(0)
    ref = transformers.CLIPModel(transformers.CLIPConfig(**cfg)).eval()
    ref.save_pretrained(out)
    for name in ("preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).write_text((CHECKPOINT / name).read_text())
    CLIPTokenizer.from_openai_bpe(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz").save(out)
    return ref


def _open_clip_twin(zoo_model):
    """open_clip ViT-B-32-quickgelu holding zoo_model's weights (zoo's open_clip conversion, inverted per key)."""
    import open_clip
    from zoo.loader import convert_state_dict
    from zoo.plugins.clip import COMPONENTS
    oc = open_clip.create_model("ViT-B-32-quickgelu").eval()
    ours = zoo_model.state_dict()
    sd = {}
    for key, value in oc.state_dict().items():
        (name, _), = convert_state_dict(COMPONENTS["clip"]["open_clip"], {key: value}).items()
        sd[key] = ours[name].T if key in ("visual.proj", "text_projection") else ours[name]  # stored x @ P
    oc.load_state_dict(sd)
    return oc


def _time(fn, rounds: list[float]) -> None:
    start = time.perf_counter()
    fn()
    rounds.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import open_clip
    import transformers
    import zoo

    with tempfile.TemporaryDirectory() as tmp:
        hf = _hf_repo(Path(tmp))
        ours = zoo.create("clip-vit-b32", weights=tmp, device="cpu")
        hf_tok = transformers.CLIPTokenizer.from_pretrained(tmp)
    oc = _open_clip_twin(ours)
    oc_tok = open_clip.get_tokenizer("ViT-B-32")

    import timm.data
    info = timm.data.ImageNetInfo()
    texts = [f"a photo of a {info.index_to_description(i * 31).split(',')[0]}." for i in range(args.batch)]
    x = torch.randn(args.batch, 3, 224, 224)
    ids77 = hf_tok(texts, padding="max_length", max_length=77, return_tensors="pt")
    ids_longest = hf_tok(texts, padding=True, return_tensors="pt")
    oc_ids = oc_tok(texts)

    with torch.inference_mode():  # the three agree before anything is timed
        ref = hf.get_image_features(pixel_values=x).pooler_output
        assert (ours.encode_image(x) - ref).abs().max() < 1e-4 and (oc.encode_image(x) - ref).abs().max() < 1e-4
        ref = hf.get_text_features(**ids77).pooler_output
        assert (ours.encode_text(texts) - ref).abs().max() < 1e-4 and (oc.encode_text(oc_ids) - ref).abs().max() < 1e-4

    cases = {
        "image": {"zoo": lambda: ours.encode_image(x),
                  "transformers": lambda: hf.get_image_features(pixel_values=x),
                  "open_clip": lambda: oc.encode_image(x)},
        "text (ids, 77 tokens)": {"zoo": lambda: ours.encode_text(oc_ids),
                                  "transformers": lambda: hf.get_text_features(**ids77),
                                  "open_clip": lambda: oc.encode_text(oc_ids)},
        "text (ids, HF padding=True)": {"zoo": lambda: ours.encode_text(ids_longest.input_ids),
                                        "transformers": lambda: hf.get_text_features(**ids_longest)},
        "text (strings)": {"zoo": lambda: ours.encode_text(texts),
                           "transformers": lambda: hf.get_text_features(**hf_tok(texts, padding=True,
                                                                                  return_tensors="pt")),
                           "open_clip": lambda: oc.encode_text(oc_tok(texts))},
    }
    print(f"clip-vit-b32, batch {args.batch}, CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, open_clip {open_clip.__version__}; best of {args.rounds} rounds")
    print("| case | zoo /s | transformers /s | open_clip /s | zoo / transformers | zoo / open_clip |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for case, fns in cases.items():
            times: dict[str, list[float]] = {lib: [] for lib in fns}
            for fn in fns.values():
                fn()  # warm-up
            for _ in range(args.rounds):
                for lib, fn in fns.items():
                    _time(fn, times[lib])
            rate = {lib: args.batch / min(t) for lib, t in times.items()}
            oc_rate = f"{rate['open_clip']:.1f}" if "open_clip" in rate else "-"
            oc_ratio = f"{rate['zoo'] / rate['open_clip']:.2f}" if "open_clip" in rate else "-"
            print(f"| {case} | {rate['zoo']:.1f} | {rate['transformers']:.1f} | {oc_rate} | "
                  f"{rate['zoo'] / rate['transformers']:.2f} | {oc_ratio} |")


if __name__ == "__main__":
    main()
