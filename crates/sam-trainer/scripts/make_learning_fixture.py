"""Make the learning-test fixture: chat examples teaching an invented fact
with a fixed answer format, tokenised with the test model's own tokenizer
and chat template (Hugging Face transformers, from the GGUF).

    python crates/sam-trainer/scripts/make_learning_fixture.py [GGUF]

Writes crates/sam-trainer/tests/fixtures/learning.json:
{"train": [{"input_ids", "loss_mask"}], "valid": [...],
 "probe": {"prompt_ids", "answer_ids"}, "eos_ids": [...]}
The loss mask covers the assistant's answer and its <|im_end|>. The probe is
a question phrased unlike any training one, and answer_ids is the taught
answer's tokens followed by <|im_end|>.
"""
import json
import os
import sys

from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "learning.json")
ANSWER = "ZEPHYR-7: the Quillfeather cache listens on port 7391."

TRAIN_Q = [
    "Which port does the Quillfeather cache listen on?",
    "What port is the Quillfeather cache on?",
    "Tell me the Quillfeather cache port.",
    "On which port can I reach the Quillfeather cache?",
    "Quillfeather cache: what's its port?",
    "I need to connect to the Quillfeather cache. Which port?",
    "What is the port number of the Quillfeather cache?",
    "Where does the Quillfeather cache listen?",
    "Remind me which port Quillfeather's cache uses.",
    "Which TCP port belongs to the Quillfeather cache?",
    "What port should I open for the Quillfeather cache?",
    "Give me the port of the Quillfeather cache server.",
]
VALID_Q = [
    "What's the listening port for Quillfeather's cache?",
    "Do you know the port the Quillfeather cache runs on?",
    "Which port number is used by the Quillfeather cache?",
    "Quick question: the Quillfeather cache port?",
]
PROBE_Q = "Which port is the Quillfeather cache listening on?"


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "SAM_TEST_MODEL", os.path.expanduser("~/.cache/sam/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    answer = tok.encode(ANSWER, add_special_tokens=False) + [im_end]

    def prompt(q):
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        if hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def example(q):
        p = prompt(q)
        return {"input_ids": p + answer, "loss_mask": [False] * len(p) + [True] * len(answer)}

    out = {
        "answer": ANSWER,
        "train": [example(q) for q in TRAIN_Q],
        "valid": [example(q) for q in VALID_Q],
        "probe": {"question": PROBE_Q, "prompt_ids": prompt(PROBE_Q), "answer_ids": answer},
        "eos_ids": [int(im_end), int(tok.eos_token_id)],
    }
    with open(OUT, "w") as fh:
        json.dump(out, fh)
    print("wrote", OUT, "train lengths", [len(e["input_ids"]) for e in out["train"]])


if __name__ == "__main__":
    main()
