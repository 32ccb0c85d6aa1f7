#!/usr/bin/env python3
"""Re-save tiny-melody with transformers 5.x (run with the text-to-music fixtures venv, after
tools/make_melody_fixtures.py): tiny-melody-v5/checkpoint holds the same weights in the 5.x config
dialect, which `dgx-music` must load as well as the 4.x dialect of the published melody checkpoints."""

import json
import os
import shutil
import sys

import torch
import transformers
from transformers import MusicgenMelodyForConditionalGeneration

out = sys.argv[1] if len(sys.argv) > 1 else "crates/musicgen/tests/fixtures"
src = os.path.join(out, "tiny-melody", "checkpoint")
root = os.path.join(out, "tiny-melody-v5")
dst = os.path.join(root, "checkpoint")
assert transformers.__version__.startswith("5."), "run this with transformers 5.x"
if os.path.exists(dst):
    shutil.rmtree(dst)
model = MusicgenMelodyForConditionalGeneration.from_pretrained(src)
model.save_pretrained(dst)
for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(src, name), os.path.join(dst, name))
for extra in ("chat_template.jinja",):
    if os.path.exists(os.path.join(dst, extra)):
        os.remove(os.path.join(dst, extra))
with open(os.path.join(root, "reference.json"), "w") as f:
    json.dump({
        "same_weights_as": "tiny-melody",
        "config_dialect": f"transformers {transformers.__version__}: dtype instead of torch_dtype, only the fields "
                          "that differ from the class defaults",
        "checkpoint_files": sorted(os.listdir(dst)),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }, f, indent=2)
    f.write("\n")
