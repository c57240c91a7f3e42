"""Named synthesis presets with the published defaults (../shared/research/algorithms.md §2).

Each preset is one configuration of the shared engine (:mod:`edgekd.data.synth.engine`):

=============  ===========  ======  =====================  ==========================  ================
preset         variables    labels  BN statistic           extra terms                 iterations/batch
=============  ===========  ======  =====================  ==========================  ================
genie          G + latents  no      batch mean / std, l2²  input N(0,1) prior, swing   4000
deepinversion  pixels       yes     batch mean / var, l2   CE, TV-l2, l2, jitter/flip  2000
adi            pixels       yes     batch mean / var, l2   DeepInversion's + student   2000
                                                           competition (1 − JS)
zeroq          pixels       no      per-sample mean/std    input N(0,1) prior          500
dfad           G (adv.)     no      none                   adversarial L1 on logits    (a training run)
dfad-bn        G (adv.)     no      batch mean / std, l2²  adversarial L1, class       (a training run)
                                                           balance (batch entropy)
dfad-balanced  G (adv.)     no      none                   adversarial L1, class       (a training run)
                                                           balance; no BatchNorm needed
=============  ===========  ======  =====================  ==========================  ================

``iterations``/``batch_size``/``lr`` can be overridden per run; the run records what was used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from edgekd.registry import Registry


@dataclass(frozen=True)
class SynthPreset:
    name: str
    variables: Literal["pixels", "generator", "adversarial"]
    stat: Literal["batch", "per_sample", "none"] = "batch"
    #: what is matched and how: "std-l2sq" (Genie, ZeroQ: ‖σ − σ̂‖² / n), "var-l2" (DeepInversion: ‖σ² − σ̂²‖₂)
    match: Literal["std-l2sq", "var-l2", "none"] = "std-l2sq"
    bn_weight: float = 1.0
    first_bn_multiplier: float = 1.0
    input_prior: bool = False  # ‖mean_c(x)‖²/B + ‖1 − std_c(x)‖²/B: input statistics pulled to N(0, 1)
    ce_weight: float = 0.0  # cross-entropy toward sampled labels (class-conditional synthesis)
    balance_weight: float = 0.0  # adversarial presets: − H(mean_batch softmax(T(x))), keeps every class generated
    adi_weight: float = 0.0  # Adaptive DeepInversion: λ_ADI·(1 − JS(S(x), T(x))) against a student trained in between
    adi_kd_epochs: int = 0  # ADI: epochs of KD of that student on all images so far, after each batch
    adi_kd_max_steps: int = 160  # ADI: at most this many KD steps per round, so large sets cost linear, not quadratic, time
    tv_l2: float = 0.0
    tv_l1: float = 0.0
    l2: float = 0.0
    jitter: int | None = None  # px; None: none; -1: scaled to the input size (±30 px at 224, ±2 at 32)
    flip: bool = False
    swing: bool = False
    clip: bool = False  # clip pixels to the valid normalised range after each step
    lr: float = 0.1  # pixels (or latents z for generator presets)
    lr_generator: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["cosine", "plateau"] = "plateau"
    warmup: int = 0
    iterations: int = 500
    batch_size: int = 64
    nz: int = 256
    requires_bn: bool = True
    reference: str = ""

    def with_overrides(self, **kw: Any) -> "SynthPreset":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: Registry[SynthPreset] = Registry("synthesis method")

PRESETS.add("genie", SynthPreset(
    name="genie", variables="generator", stat="batch", match="std-l2sq", input_prior=True, swing=True,
    lr=0.1, lr_generator=0.01, betas=(0.9, 0.999), scheduler="plateau", iterations=4000, batch_size=128, nz=256,
    reference="Jeon, Lee, Kim. Genie: Show Me the Data for Quantization. CVPR 2023 (SamsungLabs/Genie distill.py)"))

PRESETS.add("deepinversion", SynthPreset(
    name="deepinversion", variables="pixels", stat="batch", match="var-l2", bn_weight=10.0, first_bn_multiplier=10.0,
    ce_weight=1.0, tv_l2=2.5e-5, l2=0.0, jitter=-1, flip=True, clip=True, lr=0.1, betas=(0.5, 0.9),
    scheduler="cosine", warmup=100, iterations=2000, batch_size=256,
    reference="Yin et al. Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion. CVPR 2020 "
              "(NVlabs/DeepInversion, CIFAR-10 settings)"))

PRESETS.add("adi", replace(
    PRESETS.get("deepinversion"), name="adi", adi_weight=20.0, adi_kd_epochs=20, batch_size=128,
    reference="Yin et al. Dreaming to Distill, CVPR 2020: Adaptive DeepInversion (NVlabs/DeepInversion cifar10 "
              "get_images' JS competition term); batches alternate with KD of the student. Weight 20, not the paper's "
              "0.2 (ImageNet loss scale): at 0.2-5 the term barely moves the teacher-student JS on our teachers, at 20 "
              "it lifts it and the transfer (benchmarks/results/datafree.md)"))

PRESETS.add("zeroq", SynthPreset(
    name="zeroq", variables="pixels", stat="per_sample", match="std-l2sq", input_prior=True, lr=0.5,
    betas=(0.9, 0.999), scheduler="plateau", iterations=500, batch_size=64,
    reference="Cai et al. ZeroQ: A Novel Zero Shot Quantization Framework. CVPR 2020 (amirgholami/ZeroQ distill_data.py)"))

PRESETS.add("dfad", SynthPreset(
    name="dfad", variables="adversarial", stat="none", match="none", lr=0.01, lr_generator=1e-3, betas=(0.9, 0.999),
    scheduler="cosine", iterations=2000, batch_size=256, nz=100, requires_bn=False,
    reference="Fang et al. Data-Free Adversarial Distillation. arXiv 1912.11006 (VainF/Data-Free-Adversarial-Distillation, MNIST recipe)"))


PRESETS.add("dfad-bn", SynthPreset(
    name="dfad-bn", variables="adversarial", stat="batch", match="std-l2sq", bn_weight=1.0, balance_weight=1.0,
    lr=0.01, lr_generator=1e-3, betas=(0.9, 0.999), scheduler="cosine", iterations=2000, batch_size=256, nz=100,
    requires_bn=True,
    reference="DFAD (Fang et al., arXiv 1912.11006) with the generator regularisers of Choi et al., Data-Free Network "
              "Quantization With Adversarial Knowledge Distillation, CVPR Workshops 2020: BN-statistics matching and "
              "batch categorical entropy (class balance)"))


PRESETS.add("dfad-balanced", SynthPreset(
    name="dfad-balanced", variables="adversarial", stat="none", match="none", balance_weight=1.0, lr=0.01,
    lr_generator=1e-3, betas=(0.9, 0.999), scheduler="cosine", iterations=2000, batch_size=256, nz=100,
    requires_bn=False,
    reference="DFAD (Fang et al., arXiv 1912.11006) with the class-balance (batch categorical entropy) generator term of "
              "Choi et al., CVPR Workshops 2020; needs no BatchNorm"))


def is_adversarial(name: str) -> bool:
    """True for presets that train a student inside the synthesis game (DFAD and its variants)."""
    return PRESETS.get(name.lower()).variables == "adversarial"


def get_preset(name: str) -> SynthPreset:
    return PRESETS.get(name.lower())
