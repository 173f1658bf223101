"""The twelve notes: slug, title and the claim each experiment measures.

The catalogue lists every note whether or not its experiment exists yet, so
`deepnotes list` and the report can say plainly what is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Note", "NOTES", "NOTES_BY_SLUG", "QUICK_BUDGET_SECONDS", "docs_page"]


@dataclass(frozen=True)
class Note:
    number: int
    slug: str
    title: str
    claim: str  # one sentence, measurable
    budget_seconds: float  # wall-clock budget at quick scale on 2 cores; the twelve add up to 600 s

    @property
    def docs(self) -> str:
        """Path of the note's docs page, relative to the repository root."""
        return docs_page(self.number, self.slug)


def docs_page(number: int, slug: str) -> str:
    return f"docs/notes/{number:02d}-{slug}.md"


NOTES: tuple[Note, ...] = (
    Note(1, "temporal-modeling", "2D temporal modules vs 3D CNNs",
         "On OrderShapes, TSN stays near 50% on reversal pairs while TSM and TDN exceed 85%; "
         "a 3D ResNet of the same depth costs at least 2.5x TSM's FLOPs and is slower on the CPU; "
         "the uniformity of learned 3D temporal kernels is measured.",
         budget_seconds=65),
    Note(2, "two-stream", "Two-stream networks: RGB + optical flow",
         "The spatial stream wins the appearance classes, the temporal stream the motion classes, "
         "and averaged fusion beats both streams overall.",
         budget_seconds=45),
    Note(3, "score-sde", "Score-based diffusion with SDEs",
         "Reverse-SDE and probability-flow ODE samples reach the same quality (sliced Wasserstein "
         "within 1.5x of the data's noise floor), the ODE with far fewer evaluations; the ODE "
         "log-likelihood of Gaussian data matches the analytic value within 1e-3 nats.",
         budget_seconds=65),
    Note(4, "activations", "Activation functions: from the step to SwiGLU",
         "Gradient norm through a deep sigmoid stack decays geometrically where ReLU/GELU do not; "
         "a high learning rate leaves dead ReLU units but not leaky/GELU ones; SwiGLU/GEGLU reach "
         "lower validation loss than ReLU at matched parameters.",
         budget_seconds=80),
    Note(5, "stochastic-approximation", "Stochastic approximation: Robbins-Monro and the incremental mean",
         "The incremental mean equals the batch mean at every n with MSE sigma^2/n; Robbins-Monro "
         "with a/n steps reaches n*Var -> a^2 sigma^2/(2a-1) for a > 1/2 and is slower below; "
         "Kiefer-Wolfowitz and SPSA minimise a noisy function from values alone; Polyak averaging "
         "reaches the optimal rate.",
         budget_seconds=15),
    Note(6, "flash-attention", "FlashAttention: exact tiled attention",
         "Output and gradients equal a float64 reference within flash-attn's tolerance rule; peak "
         "memory grows linearly in N where naive attention grows quadratically; speed is measured "
         "against torch SDPA.",
         budget_seconds=30),
    Note(7, "upsampling", "Upsampling: interpolation, pixel shuffle, transposed convolution",
         "Every operator equals torch's to float32 precision; transposed convolution with kernel "
         "not divisible by stride leaves checkerboard artifacts that resize-conv and ICNR sub-pixel "
         "conv avoid; a learned x2 super-resolution ranks the methods by PSNR.",
         budget_seconds=50),
    Note(8, "smld", "Score matching and annealed Langevin dynamics (NCSN)",
         "On a 0.8/0.2 two-mode mixture annealed Langevin recovers the weights (heavy mode "
         "0.78 +- 0.03) while plain Langevin does not; denoising and sliced score matching both "
         "learn the score.",
         budget_seconds=30),
    Note(9, "sde-intro", "DDPM as the discretisation of the VP SDE",
         "One trained epsilon-network sampled by DDPM ancestral steps and by the VP SDE solver gives "
         "matching sample statistics; the discrete alpha_bar_N (0.006353) approaches the continuous "
         "value (0.006572) as N grows.",
         budget_seconds=40),
    Note(10, "adamw", "Adam vs AdamW: decoupled weight decay",
         "The implementations match torch.optim step for step; AdamW's lr x weight-decay grid is more "
         "separable than Adam+L2's and its best test error is no worse.",
         budget_seconds=70),
    Note(11, "mixed-precision", "Mixed precision: FP16, BF16, loss scaling",
         "Without loss scaling a measured fraction of FP16 gradients underflow, with dynamic scaling "
         "almost none; FP16+scaling and BF16 track FP32's final loss within FP32's own seed-to-seed spread "
         "(95% CI over seeds); BF16 speed is measured.",
         budget_seconds=40),
    Note(12, "medusa", "Medusa: extra decoding heads and tree attention",
         "Greedy acceptance reproduces the base model's greedy output token for token; trained heads "
         "accept more than 2 tokens per step on average with a wall-clock speedup, measured against "
         "prompt-lookup and assisted decoding.",
         budget_seconds=70),
)

NOTES_BY_SLUG: dict[str, Note] = {note.slug: note for note in NOTES}
QUICK_BUDGET_SECONDS = 600  # the whole quick run of twelve notes on 2 cores (the bar is 15 minutes)
