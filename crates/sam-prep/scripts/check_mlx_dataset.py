#!/usr/bin/env python3
"""Check that mlx-lm reads a folder written by `sam prep` unchanged, and tokenises it
exactly as sam's cache says.

    python crates/sam-prep/scripts/check_mlx_dataset.py DATASET_DIR GGUF_PATH

Needs mlx-lm, and transformers able to read GGUF (torch, gguf): pip install "mlx[cpu]"
mlx-lm torch transformers gguf. Loads the folder
with mlx-lm's own loader (`mlx_lm.tuner.datasets.load_local_dataset`, what
`mlx_lm.lora --data DIR` calls), processes every row as mlx-lm's trainer does, and compares the
token ids with sam's cache (`cache/sft-<split>.bin`) for rows sam did not truncate.
"""
import json
import struct
import sys
import types
from pathlib import Path

from mlx_lm.tuner.datasets import load_local_dataset
from transformers import AutoTokenizer

data_dir, gguf = Path(sys.argv[1]), Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def read_sft(path):
    b = path.read_bytes()
    assert b[:8] == b"SAMSFT01", path
    (n,) = struct.unpack_from("<Q", b, 8)
    pos, out = 16, {}
    for _ in range(n):
        (k,) = struct.unpack_from("<I", b, pos); pos += 4
        ex_id = b[pos:pos + k].decode(); pos += k
        (k,) = struct.unpack_from("<I", b, pos); pos += 4 + k  # domain
        (k,) = struct.unpack_from("<I", b, pos); pos += 4
        ids = list(struct.unpack_from(f"<{k}I", b, pos)); pos += 4 * k
        pos += k  # mask
        out[ex_id] = ids
    return out


manifest = json.loads((data_dir / "manifest.json").read_text())
max_len = manifest["max_seq_len"]
args = types.SimpleNamespace(mask_prompt=True)
splits = load_local_dataset(data_dir, tok, args)
checked = same = 0
for name, ds in zip(("train", "valid", "test"), splits):
    if not ds:
        continue
    cache = read_sft(data_dir / "cache" / f"sft-{name}.bin")
    rows = [json.loads(l) for l in (data_dir / f"{name}.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        tokens, offset = ds.process(ds[i])
        ours = cache[row["id"]]
        if len(tokens) > max_len:
            continue  # sam truncated this one by its own policy
        checked += 1
        same += tokens == ours
        if tokens != ours:
            print(f"{name} row {i} ({row['id']}): mlx-lm {len(tokens)} ids, sam {len(ours)} ids")
    print(f"{name}: {type(ds).__name__}, {len(ds)} rows")
print(json.dumps({"rows_compared": checked, "identical_ids": same}))
sys.exit(0 if checked and same == checked else 1)
