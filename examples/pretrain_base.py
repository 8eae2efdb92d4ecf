"""Make a small pretrained causal LM to start a simulator from, where no hub can be reached.

`train-sim --base-model PATH` takes any saved GPT-2 with its tokenizer (`gpt2` itself where the
hub answers). This script makes one offline: a byte-level BPE tokenizer and a GPT-2 trained
briefly on the docstrings and comments of Python's standard library (English prose that every
Python installation carries), both saved to OUT. It knows far less than a real GPT-2, but its
token embeddings and blocks are shaped by language, which is what the pretrained-text channel
and LoRA build on (README: "Starting from a pretrained base").

Run:
    python examples/pretrain_base.py --out runs/base               # ~10 minutes on one core
    python examples/pretrain_base.py --out runs/base --smoke       # seconds
    llm-usersim train-sim --logs LOGS --out SIM --base-model runs/base [--lora-rank 8]
"""

from __future__ import annotations

import ast
import dataclasses
import math
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _args import parse_dataclass  # examples/_args.py


@dataclass
class Args:
    """Settings; defaults do a real run, --smoke a tiny one."""

    out: str = "runs/base"
    """Directory for the model and tokenizer."""
    vocab_size: int = 4096
    """BPE vocabulary."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 512
    """Context (train-sim's default context is 512 tokens)."""
    batch_size: int = 8
    """Sequences of n_positions tokens per step."""
    lr: float = 1e-3
    max_minutes: float = 10.0
    """Training time."""
    max_chars: int = 12_000_000
    """Text read from the standard library (its docstrings and comments)."""
    seed: int = 0
    threads: int = 1
    """torch threads (keep it small on a shared machine)."""
    smoke: bool = False
    """Tiny settings: a few seconds."""


def parse_args() -> Args:
    """Args from the command line (one flag per field, CleanRL style)."""
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(
            args,
            vocab_size=300,
            n_layer=2,
            n_head=2,
            n_embd=32,
            max_minutes=0.05,
            max_chars=200_000,
        )
    return args


def stdlib_prose(max_chars: int) -> list[str]:
    """Docstrings and comment lines of the standard library's modules, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
                    total += len(doc)
        comments = [ln.strip()[1:].strip() for ln in source.splitlines() if ln.strip()[:2] == "# "]
        if comments:
            texts.append(" ".join(comments))
            total += len(texts[-1])
        if total >= max_chars:
            break
    return texts


def main() -> None:
    """Read the prose, train the tokenizer, pre-train the network, save both."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    texts = stdlib_prose(int(args.max_chars))
    print(f"{sum(len(t) for t in texts):,} characters of standard-library prose")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    eos = "<|endoftext|>"
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            special_tokens=[eos],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=eos, eos_token=eos, unk_token=eos)
    ids = [i for t in texts for i in [*tok(" " + t)["input_ids"], tok.eos_token_id]]
    stream = torch.tensor(ids, dtype=torch.long)
    t = args.n_positions
    chunks = stream[: len(stream) // t * t].view(-1, t)
    val, train = chunks[: max(1, len(chunks) // 50)], chunks[max(1, len(chunks) // 50) :]
    print(f"{len(stream):,} tokens: {len(train)} training and {len(val)} held-out sequences")
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=t,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    start, step = time.time(), 0
    while time.time() - start < 60 * args.max_minutes:
        batch = train[torch.randint(len(train), (args.batch_size,), generator=gen)]
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    model.eval()
    with torch.no_grad():
        held = sum(model(v[None], labels=v[None]).loss.item() for v in val[:32])
    held /= min(len(val), 32)
    print(
        f"pre-trained {step} steps ({step * args.batch_size * t:,} tokens) in "
        f"{time.time() - start:.0f}s; held-out loss {held:.3f} nats/token "
        f"(perplexity {math.exp(held):.0f}; uniform over the vocabulary: {len(tok)})"
    )
    out = Path(args.out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"saved base to {out}")


if __name__ == "__main__":
    main()
