"""Launched by tests/test_distill.py under ``torchrun --nproc_per_node 2``: the unchanged trainer, DDP over gloo."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from edgekd.config import DistillConfig  # noqa: E402
from edgekd.data import load_dataset  # noqa: E402
from edgekd.distributed import dist_info, maybe_init_distributed  # noqa: E402
from edgekd.kd.trainer import train_student  # noqa: E402
from helpers import TinyNet  # noqa: E402

out = Path(sys.argv[2])
maybe_init_distributed()
rank, world = dist_info()
torch.set_num_threads(1)
data = load_dataset(sys.argv[1], val_fraction=0.25)
torch.manual_seed(0)
teacher = TinyNet().eval()
torch.manual_seed(1)
student = TinyNet()
res = train_student(teacher, student, data, DistillConfig(epochs=2, batch_size=16, lr=0.05, threads=1), ckpt_dir=out if rank == 0 else None)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in res.student.parameters())).hexdigest()
(out / f"rank{rank}.json").write_text(json.dumps({"world": world, "digest": digest, "epochs": len(res.history)}))
dist.destroy_process_group()
