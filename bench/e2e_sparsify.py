"""sparsify's own trainer (`sparsify.Trainer.fit`) on SmolLM2, for bench/e2e.py: run by the
peers' venv's python. Reads the token ids saescope trains on (a .pt file of (n, context)
int64), loads the same float32 SmolLM2 folder with transformers, trains a TopK SparseCoder at
the hook and prints one JSON line: the wall time of fit() and the tokens it trained on."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ids", required=True)
    p.add_argument("--model", required=True, help="the float32 SmolLM2 folder")
    p.add_argument("--hook", required=True, help="sparsify's hookpoint (under base_model)")
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--contexts-per-batch", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ["SPARSIFY_DISABLE_TRITON"] = "1"  # its Triton kernels are GPU-only
    from datasets import Dataset
    from sparsify import SparseCoderConfig, TrainConfig, Trainer
    from transformers import AutoModelForCausalLM

    ids = torch.load(a.ids)
    ds = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    with contextlib.redirect_stdout(sys.stderr):
        model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(
                SparseCoderConfig(num_latents=a.d_sae, k=a.k),
                batch_size=a.contexts_per_batch,
                hookpoints=[a.hook],
                log_to_wandb=False,
                save_dir=tmp,
                save_every=10**9,
            )
            trainer = Trainer(cfg, ds, model)
            t0 = time.perf_counter()
            trainer.fit()
            wall = time.perf_counter() - t0
    tokens = (len(ds) // a.contexts_per_batch) * a.contexts_per_batch * ids.shape[1]
    print(json.dumps({"wall_s": wall, "tokens": tokens, "setting": f"sparsify Trainer.fit: "
        f"SparseCoderConfig(num_latents={a.d_sae}, k={a.k}), batch_size="
        f"{a.contexts_per_batch} contexts, optimizer={cfg.optimizer}, loss_fn={cfg.loss_fn}, "
        f"model float32 (sparsify picks bf16 only on CUDA)"}))  # fmt: skip


if __name__ == "__main__":
    main()
