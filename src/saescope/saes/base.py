"""The abstract SAE: parameters, decode, forward, and the shape every architecture shares.

Notation (kept the same in code, files and docs): x (N, d_in) input, y (N, d_out) target
(y is x for an SAE; a module's output for a transcoder), pre (N, d_sae) pre-activations,
f (N, d_sae) feature activations, x_hat / y_hat (N, d_out) reconstruction.
W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_out), b_dec (d_out).
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saescope import lowp, ops, sparse
from saescope.errors import ConfigError, FormatError, InputError, check_keys
from saescope.saes import io
from saescope.saes.loss import LossContext, LossOutput
from saescope.saes.target import check_target

SPARSE_MODES = ("auto", "sparse", "dense")
SPARSE_MAX_DENSITY = 0.15
"""auto mode takes the sparse path when at most this fraction of codes is live..."""
SPARSE_MIN_SIZE = 2**14
"""...and the encoder has at least this many weights (below it, per-op overhead wins)."""


@dataclass(frozen=True)
class SAEConfig:
    """Fields every architecture has. Each architecture's config adds its own."""

    name: ClassVar[str] = ""
    saved_before: ClassVar[dict[str, Any]] = {}
    """Fields added after files were written, with the value a cfg.json without them meant
    (`SAE.load` fills them in, so a file saved before loads identically)."""

    d_in: int
    """Width of the input activations."""
    d_sae: int
    """Number of latents (dictionary size)."""
    d_out: int | None = None
    """Width of the reconstruction target; defaults to d_in. Differs for transcoders."""
    apply_b_dec_to_input: bool = True
    """Subtract b_dec from x before encoding (Bricken et al. pre-centring). Off for transcoders."""
    skip_connection: bool = False
    """A linear skip connection W_skip (d_out, d_in), zeros at init: forward(x) =
    decode(encode(x)) + x W_skip^T (sparsify's skip connection, SAELens's skip transcoders);
    decode(f) is unchanged. Written to cfg.json only when on."""
    target_l0: float | None = None
    """Mean L0 to train towards: sets k (TopK family), else steers the sparsity coefficient."""
    sparsity_coef: ClassVar[str | None] = None  # the field a target L0 steers (None: sets k)

    def __post_init__(self) -> None:
        if self.d_out is None:
            object.__setattr__(self, "d_out", self.d_in)
        for key in ("d_in", "d_sae", "d_out"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(self.skip_connection, bool):
            raise ConfigError(
                f"skip_connection must be true or false, got {self.skip_connection!r}"
            )
        if self.apply_b_dec_to_input and self.d_out != self.d_in:
            raise ConfigError(
                f"apply_b_dec_to_input needs d_out == d_in (got {self.d_out} != {self.d_in}); "
                "set apply_b_dec_to_input=False for a transcoder"
            )
        check_target(self)

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether training keeps each decoder row W_dec[i] at unit norm."""
        return True

    @property
    def dead_latent_strategy(self) -> str:
        """How training revives dead latents: "resample", "auxk" or "none"."""
        return "none"

    def to_dict(self) -> dict[str, Any]:
        """The config with its `architecture`; `skip_connection` and `target_l0` only when
        set, so the files of SAEs without them stay as they were."""
        d = {"architecture": self.name, **dataclasses.asdict(self)}
        for key in ("skip_connection", "target_l0"):  # written only when set
            if not d[key]:
                del d[key]
        return d


ARCHITECTURES: dict[str, type[SAE]] = {}
"""Every architecture by name. A final SAE class enters itself when its module is imported
(`saes/__init__.py` imports each one); a second class under a taken name is an error."""


def architecture(name: str) -> type[SAE]:
    """The SAE class registered under `name`."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def config_from_dict(d: dict[str, Any]) -> SAEConfig:
    """An architecture's config from a dict with an `architecture` key and that config's
    fields; any other key is an error that names it (a misspelt field never passes silently)."""
    cls = architecture(str(d.get("architecture"))).config_cls
    fields = {k: v for k, v in d.items() if k != "architecture"}
    known = [f.name for f in dataclasses.fields(cls)]
    check_keys(fields, known, f"a {cls.name} SAE")
    required = [f.name for f in dataclasses.fields(cls) if _required(f)]
    missing = [k for k in required if k not in fields]
    if missing:
        raise ConfigError(
            f"a {cls.name} SAE needs {', '.join(repr(k) for k in missing)}; "
            f"give {' and '.join(missing)} (required: {', '.join(required)})"
        )
    return cls(**fields)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def make_sae(cfg: SAEConfig | dict[str, Any]) -> SAE:
    """A freshly initialised SAE for a config (or a dict with an `architecture` key)."""
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    return architecture(cfg.name)(cfg)


class SAE(nn.Module, abc.ABC):
    """Abstract sparse autoencoder. Subclasses implement `_encode` and `_loss`.

    `encode` and `forward` accept any leading shape (..., d_in): (B, S, d_in) works as
    (B*S, d_in), and BatchTopK's batch is all leading positions together.
    """

    cfg: SAEConfig
    W_skip: nn.Parameter | None
    """(d_out, d_in) with `cfg.skip_connection`, else None (not in the state dict)."""
    config_cls: ClassVar[type[SAEConfig]]
    latent_axes: ClassVar[dict[str, int]] = {"W_enc": 1, "W_dec": 0, "b_enc": 0}
    """For each parameter, the axis that indexes latents (resampling resets these entries)."""
    has_b_enc: ClassVar[bool] = True
    """Whether the encoder has the bias b_enc (d_sae,) (the gated SAE has its own two)."""
    decoder_init_norm: ClassVar[float] = 1.0
    sparse_mode: str = "auto"
    """How `loss` computes: "sparse" (saescope.sparse: work only on live codes), "dense"
    (plain autograd) or "auto" (sparse when the live density and the size make it faster).
    Both give the same values and gradients; an attribute, not part of the config or files."""
    precision: str = "fp32"
    """"bf16": the encoder product from bfloat16 copies of x and W_enc (`saescope.lowp`), all
    else float32. An attribute set by training, not part of the config or files."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        name = cls.config_cls.name
        if name in ARCHITECTURES:
            raise TypeError(f"architecture {name!r} is taken by {ARCHITECTURES[name].__name__}")
        ARCHITECTURES[name] = cls

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_cls):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_cls.__name__}")
        self.cfg = cfg
        self.live_density = 1.0
        """Fraction of codes the last `loss` call had to touch (the sparse path's work)."""
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        # (d_in, d_sae) stored latent-major: the sparse backward builds W_enc's gradient as
        # (d_sae, d_in) rows, so this layout takes it without a transposing copy.
        self.W_enc = nn.Parameter(torch.empty(d_sae, d_in).t())
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_out))  # type: ignore[arg-type]
        self.b_dec = nn.Parameter(torch.zeros(d_out))  # type: ignore[arg-type]
        if self.has_b_enc:
            self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self._extra_params()
        skip = nn.Parameter(torch.zeros(d_out, d_in)) if cfg.skip_connection else None  # type: ignore[arg-type]
        self.register_parameter("W_skip", skip)
        self.reset_parameters()

    def _extra_params(self) -> None:
        """Create architecture-specific parameters and buffers (each per-latent one listed in
        `latent_axes`, with its initial value in `_initial`)."""

    # ----- initialisation -------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random unit decoder rows; encoder tied to the decoder's transpose when shapes allow
        (Gao et al. 2024 sec. 2.4), otherwise a fan-in scaled random matrix; zero biases."""
        self.W_dec.copy_(ops.unit_rows(torch.randn_like(self.W_dec)) * self.decoder_init_norm)
        if self.cfg.d_in == self.cfg.d_out:
            self.W_enc.copy_(self.W_dec.T / self.decoder_init_norm)
        else:
            self.W_enc.copy_(torch.randn_like(self.W_enc) / self.cfg.d_in**0.5)
        self.b_dec.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()
        for name in self._per_latent_vectors():
            getattr(self, name).fill_(self._initial(name))

    def _initial(self, name: str) -> float:
        """The initial value of every entry of the per-latent vector `name` (b_enc, ...)."""
        return 0.0

    def _per_latent_vectors(self) -> list[str]:
        """Names of the one-dimensional per-latent parameters (biases, thresholds, scales)."""
        return [n for n in self.latent_axes if getattr(self, n).dim() == 1]

    # ----- the forward pass -----------------------------------------------------------------

    def _centre(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _flat(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise InputError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != self.cfg.d_in:
            raise InputError(
                f"input has shape {tuple(x.shape)} but this SAE takes d_in={self.cfg.d_in} "
                "in the last dimension; use activations from the hook it was trained on"
            )
        return x.reshape(-1, self.cfg.d_in)

    def pre_acts(self, x: Tensor) -> Tensor:
        """x (N, d_in) -> pre (N, d_sae) = (x - b_dec) W_enc + b_enc (no b_dec for transcoders)."""
        return self._enc_product(self._centre(x), self.W_enc) + self.b_enc

    def _enc_product(self, xc: Tensor, w: Tensor) -> Tensor:
        """xc @ w at the SAE's `precision` (bf16: `lowp.mm`, float32 gradients)."""
        return lowp.mm(xc, w) if self.precision == "bf16" else xc @ w

    def sparse_encode(self, x: Tensor, choosers: Sequence[sparse.Chooser]) -> list:
        """`sparse.encode` of x with this SAE's encoder, at its `precision`."""
        low = self.precision == "bf16"
        return sparse.encode(x, self.W_enc, self.b_enc, self.centring_bias(), choosers, low)

    def encode(self, x: Tensor) -> Tensor:
        """x (..., d_in) -> f (..., d_sae)."""
        f = self._encode(self._flat(x))
        return f.reshape(*x.shape[:-1], self.cfg.d_sae)

    @abc.abstractmethod
    def _encode(self, x: Tensor) -> Tensor:
        """x (N, d_in) -> f (N, d_sae). Training mode may differ from inference (BatchTopK)."""

    def decode(self, f: Tensor) -> Tensor:
        """f (..., d_sae) -> x_hat (..., d_out)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """x (..., d_in) -> y_hat (..., d_out) = decode(encode(x)) (+ x W_skip^T)."""
        return self.reconstruct(self.encode(x), x)

    def reconstruct(self, f: Tensor, x: Tensor) -> Tensor:
        """forward's output from x (..., d_in) and its codes f = encode(x): decode(f), plus
        x W_skip^T with a skip connection. Use it wherever an SAE stands in for activations."""
        y_hat = self.decode(f)
        return y_hat if self.W_skip is None else y_hat + x @ self.W_skip.T

    def loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        """All loss terms on a batch x (N, d_in), y (N, d_out). With a skip connection the
        architecture's terms are those of the target y - x W_skip^T, so the squared error is
        |y - forward(x)|^2 and W_skip learns through the target (on either path); `y_hat`
        includes the skip. AuxK's residual is the same; gated's gate_aux keeps it frozen."""
        if self.W_skip is None:
            return self._loss(x, y, ctx)
        x = self._flat(x)
        skip = x @ self.W_skip.T
        out = self._loss(x, y.reshape(skip.shape) - skip, ctx)
        out.y_hat = out.y_hat + skip.detach()
        return out

    @abc.abstractmethod
    def _loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        """The architecture's loss terms on a batch x (N, d_in), y (N, d_out) (see `loss`)."""

    def use_sparse(self, density: float) -> bool:
        """Whether `loss` takes the sparse path, at this expected fraction of live codes."""
        if self.sparse_mode not in SPARSE_MODES:
            raise ConfigError(
                f"sparse_mode must be one of {SPARSE_MODES}, got {self.sparse_mode!r}"
            )
        if self.sparse_mode != "auto":
            return self.sparse_mode == "sparse"
        big = self.cfg.d_in * self.cfg.d_sae >= SPARSE_MIN_SIZE
        return big and density <= SPARSE_MAX_DENSITY

    def centring_bias(self) -> Tensor | None:
        """b_dec when the encoder subtracts it from its input, else None."""
        return self.b_dec if self.cfg.apply_b_dec_to_input else None

    def after_step(self, out: LossOutput) -> None:
        """Update running statistics after a successful optimiser step."""

    def finish_training(self, xs: Sequence[Tensor]) -> dict[str, Any]:
        """Once, after the last step and before the final save: settle what the SAE estimates
        from data (BatchTopK's inference threshold) with its final weights, on the last
        training batches xs (N, d_in) as training saw them (normalised). Returns fields for
        the final metrics."""
        return {}

    def mse(self, y: Tensor, y_hat: Tensor) -> Tensor:
        """Squared error summed over the output dimension, mean over tokens."""
        return ops.squared_error(y_hat, y)

    # ----- helpers for training ---------------------------------------------------------------

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Scale every decoder row to unit norm."""
        ops.unit_rows_(self.W_dec)

    @torch.no_grad()
    def resample_latents(self, idx: Tensor, enc_dirs: Tensor, dec_dirs: Tensor) -> None:
        """Give latents `idx` new encoder/decoder directions (Bricken et al. 2023, resampling):
        decoder rows become the unit `dec_dirs`, encoder columns the unit `enc_dirs` times
        0.2 x the mean encoder norm of the other latents; other per-latent parameters reset."""
        alive = torch.ones(self.cfg.d_sae, dtype=torch.bool, device=idx.device)
        alive[idx] = False
        enc_norm = self.W_enc[:, alive].norm(dim=0).mean() if alive.any() else 1.0
        dec_norm = 1.0 if self.cfg.unit_norm_decoder else self.decoder_init_norm
        self.W_dec[idx] = ops.unit_rows(dec_dirs) * dec_norm
        self.W_enc[:, idx] = (ops.unit_rows(enc_dirs) * 0.2 * enc_norm).T
        for name in self._per_latent_vectors():
            getattr(self, name)[idx] = self._initial(name)

    @torch.no_grad()
    def fold_scale(self, scale_in: float, scale_out: float) -> None:
        """Fold activation normalisation into the weights.

        Trained on x' = s_in x and y' = s_out y, the folded SAE takes raw x and returns raw y:
        W_enc <- s_in W_enc, W_dec <- W_dec / s_out, b_dec <- b_dec / s_out, and a skip
        connection W_skip <- W_skip s_in / s_out. Pre-centring stays exact because then
        s_in == s_out: (s x - b) W = (x - b/s)(s W).
        """
        self.W_enc.mul_(scale_in)
        self.W_dec.div_(scale_out)
        self.b_dec.div_(scale_out)
        if self.W_skip is not None:
            self.W_skip.mul_(scale_in / scale_out)

    def to_file_tensors(self) -> dict[str, Tensor]:
        """Tensors as saved (SAELens names and shapes)."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def from_file_tensors(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Inverse of `to_file_tensors`: a state dict for `load_state_dict`."""
        return dict(tensors)

    # ----- files ---------------------------------------------------------------------------

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Save as a folder (cfg.json + sae_weights.safetensors), each file atomically."""
        return io.write(path, self.cfg.to_dict(), self.to_file_tensors(), metadata or {})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SAE:
        """Load a saved SAE in eval mode: `SAE.load` takes any architecture, `TopKSAE.load`
        only its own. float64 weights stay float64 (others load as float32). Never unpickles:
        JSON + safetensors only."""
        cfg = io.read_cfg(path)
        io.check_sizes(path, cfg)
        try:
            fields = io.config_part(cfg)
            name = str(cfg["architecture"])
            legacy = architecture(name).config_cls.saved_before if name in ARCHITECTURES else {}
            config = config_from_dict({**legacy, **fields})
        except ConfigError as e:
            raise FormatError(f"{Path(path) / io.CFG_FILE}: {e}") from None
        if cls is not SAE and config.name != cls.config_cls.name:
            raise FormatError(
                f"{path} holds a {config.name} SAE, not {cls.config_cls.name}; use SAE.load"
            )
        sae = make_sae(config)
        state = sae.from_file_tensors(io.read_weights(path, device))
        if state["W_dec"].dtype == torch.float64:  # kept, as the peer formats' loaders keep it
            sae = sae.double()
        expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if expected != got:
            raise FormatError(io.tensor_mismatch(path, config.name, expected, got))
        sae.load_state_dict(state)
        return sae.to(device).eval()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cfg.to_dict().items())
