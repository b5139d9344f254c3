"""Offline quickstart: a small Swin with Mona, trained briefly on scikit-learn's digits, adapter saved.

python scripts/quickstart.py [--output_dir outputs/quickstart] [--steps 300]
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import PeftModel, get_peft_model
from transformers import SwinConfig, SwinForImageClassification

import mona_peft
from mona_peft.offline_data import digits_tensors


def build_base(seed: int) -> SwinForImageClassification:
    """A small Swin for 32x32 inputs; seeded, so the same backbone can be rebuilt to reload the adapter."""
    torch.manual_seed(seed)
    config = SwinConfig(
        image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=10
    )
    return SwinForImageClassification(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/quickstart")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    (train_x, train_y), (val_x, val_y) = digits_tensors(image_size=32, seed=args.seed)
    model = get_peft_model(build_base(args.seed), mona_peft.MonaConfig(modules_to_save=["classifier"]))
    model.print_trainable_parameters()

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=0.05
    )
    model.train()
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        batch = torch.randint(len(train_y), (args.batch_size,), generator=generator)
        loss = model(pixel_values=train_x[batch], labels=train_y[batch]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        accuracy = (model(pixel_values=val_x).logits.argmax(-1) == val_y).float().mean().item()
    print(f"validation top-1 {accuracy:.4f} after {args.steps} steps in {time.perf_counter() - start:.1f}s")

    model.save_pretrained(args.output_dir)
    # The (seeded, untrained) backbone is rebuilt identically; the adapter file carries everything else.
    reloaded = PeftModel.from_pretrained(build_base(args.seed), args.output_dir).eval()
    with torch.no_grad():
        same = torch.allclose(reloaded(pixel_values=val_x[:8]).logits, model(pixel_values=val_x[:8]).logits, atol=1e-5)
    print(f"adapter saved to {args.output_dir}; reloaded logits match: {same}")


if __name__ == "__main__":
    main()
