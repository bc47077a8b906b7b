"""Policy loading: a causal or seq2seq LM with a LoRA adapter and a value head; the reference is the same
network with the adapter switched off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rlhf.config import EMBEDDED_SMOLLM2, PolicyConfig

VALUE_HEAD_FILE = "value_head.safetensors"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_model_path(name_or_path: str, log: Callable[[str], None] = print) -> str:
    """Map the embedded model's alias to its cached folder; pass anything else through to from_pretrained."""
    if name_or_path == EMBEDDED_SMOLLM2:
        from rlhf.offline import ensure_smollm2

        return str(ensure_smollm2(log=log))
    return name_or_path


def load_error(kind: str, name: str, err: Exception, flag: str) -> ValueError:
    looks_local = name.startswith((".", "/", "~"))
    hint = (
        f"the folder {name!r} does not exist"
        if looks_local and not Path(name).expanduser().exists()
        else "check the name (a Hugging Face model id such as 'google/flan-t5-base') or give a local folder "
        "holding config.json and weights; with no network only local folders and the embedded defaults work"
    )
    return ValueError(
        f"could not load {kind} {name!r}: {hint}. Pass another with {flag}. ({type(err).__name__}: {err})"
    )


class ValueHead(nn.Module):
    """Scalar value per position from the last decoder hidden state, zero-initialised so PPO starts neutral."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


@dataclass
class Batch:
    """A padded batch of (query, response) pairs laid out for one forward pass.

    Causal: input_ids = left-padded query ++ right-padded response, logits at [q_len - 1, q_len + T - 1)
    predict the response. Seq2seq: the query is the encoder input, the decoder input is
    [decoder_start] ++ response[:-1], so position t predicts response token t, the first one included.
    """

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    responses: torch.Tensor  # (B, T) response ids, right-padded
    response_mask: torch.Tensor  # (B, T) float, 1.0 on response tokens
    decoder_input_ids: torch.Tensor | None = None  # (B, T) seq2seq only
    decoder_attention_mask: torch.Tensor | None = None

    def select(self, idx: torch.Tensor) -> Batch:
        """Rows `idx`, with all-padding columns trimmed so mini-batches cost only their own length."""
        am, rm = self.attention_mask[idx], self.response_mask[idx]
        T = int(rm.sum(-1).max().item())
        if self.decoder_input_ids is None:
            q_len = self.input_ids.shape[1] - self.responses.shape[1]
            first = int((am[:, :q_len].sum(0) > 0).nonzero()[0].item())
            cols = slice(first, q_len + T)
            return Batch(self.input_ids[idx][:, cols], am[:, cols], self.responses[idx][:, :T], rm[:, :T])
        L = int(am.sum(-1).max().item())
        return Batch(
            self.input_ids[idx][:, :L],
            am[:, :L],
            self.responses[idx][:, :T],
            rm[:, :T],
            self.decoder_input_ids[idx][:, :T],
            self.decoder_attention_mask[idx][:, :T],
        )


class Policy(nn.Module):
    """LoRA-adapted LM + value head. `reference()` switches the adapter off: the frozen pre-training policy."""

    def __init__(self, model: nn.Module, tokenizer, is_encoder_decoder: bool):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        cfg = model.config
        hidden = getattr(cfg, "hidden_size", None) or cfg.d_model
        self.value_head = ValueHead(hidden).to(next(model.parameters()).device)

    @property
    def device(self) -> torch.device:
        return next(self.value_head.parameters()).device

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The reference policy: the base weights with the LoRA adapter disabled (no second copy)."""
        with self.model.disable_adapter():
            yield

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- batching ------------------------------------------------------------------------------------
    def collate(self, queries: Sequence[torch.Tensor], responses: Sequence[torch.Tensor]) -> Batch:
        from trl.trainer.utils import pad

        if len(queries) != len(responses):
            raise ValueError(f"{len(queries)} queries but {len(responses)} responses")
        if any(len(r) == 0 for r in responses):
            raise ValueError("empty response: every response needs at least one token (e.g. the EOS token)")
        pad_id = self.pad_token_id
        dev = self.device
        queries = [q.to(dev) for q in queries]
        responses = [r.to(dev) for r in responses]
        resp = pad(responses, padding_value=pad_id, padding_side="right")
        rmask = pad([torch.ones_like(r) for r in responses], padding_value=0, padding_side="right").float()
        if self.is_encoder_decoder:
            enc = pad(queries, padding_value=pad_id, padding_side="right")
            enc_mask = pad([torch.ones_like(q) for q in queries], padding_value=0, padding_side="right")
            start = torch.full_like(resp[:, :1], self.model.config.decoder_start_token_id)
            dec = torch.cat([start, resp[:, :-1]], dim=1)
            dec_mask = torch.cat([torch.ones_like(rmask[:, :1]), rmask[:, :-1]], dim=1).long()
            return Batch(enc, enc_mask, resp, rmask, dec, dec_mask)
        q = pad(queries, padding_value=pad_id, padding_side="left")
        qmask = pad([torch.ones_like(x) for x in queries], padding_value=0, padding_side="left")
        return Batch(torch.cat([q, resp], 1), torch.cat([qmask, rmask.long()], 1), resp, rmask)

    @property
    def pad_token_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return pid if pid is not None else self.tokenizer.eos_token_id

    # ---- forward -------------------------------------------------------------------------------------
    def forward(self, batch: Batch, temperature: float = 1.0, with_values: bool = True):
        """-> response logits (B, T, V) divided by temperature, and values (B, T) (None if not asked)."""
        T = batch.responses.shape[1]
        if self.is_encoder_decoder:
            out = self.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                decoder_input_ids=batch.decoder_input_ids,
                decoder_attention_mask=batch.decoder_attention_mask,
                output_hidden_states=with_values,
                use_cache=False,
            )
            logits = out.logits
            hidden = out.decoder_hidden_states[-1] if with_values else None
        else:
            position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=position_ids,
                output_hidden_states=with_values,
                use_cache=False,
                logits_to_keep=T + 1,
            )
            # positions q_len-1 .. q_len+T-2 predict the T response tokens
            logits = out.logits[:, -(T + 1) : -1]
            hidden = out.hidden_states[-1][:, -(T + 1) : -1] if with_values else None
        logits = logits.float() / temperature
        values = self.value_head(hidden) if with_values else None
        return logits, values

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        self.model.save_pretrained(folder / "adapter")
        self.tokenizer.save_pretrained(folder / "adapter")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
            str(folder / VALUE_HEAD_FILE),
        )

    def load_value_head(self, file: Path) -> None:
        from safetensors.torch import load_file

        self.value_head.load_state_dict(load_file(str(file)))


def load_tokenizer(path: str, is_encoder_decoder: bool, name: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one clear message
        raise load_error("tokenizer of policy", name, err, "--policy.name_or_path") from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right" if is_encoder_decoder else "left"
    return tok


def load_policy(cfg: PolicyConfig, device: str = "auto", log: Callable[[str], None] = print) -> Policy:
    """Load base model + tokenizer, attach a new LoRA adapter (or `cfg.adapter_path`), add a value head."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    path = resolve_model_path(cfg.name_or_path, log=log)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001
        raise load_error("policy", cfg.name_or_path, err, "--policy.name_or_path") from err
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if enc_dec else AutoModelForCausalLM
    try:
        base = auto.from_pretrained(path, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001
        raise load_error("policy", cfg.name_or_path, err, "--policy.name_or_path") from err
    tok = load_tokenizer(path, enc_dec, cfg.name_or_path)
    if base.generation_config.pad_token_id is None:
        base.generation_config.pad_token_id = tok.pad_token_id
    base.to(resolve_device(device))

    if cfg.adapter_path:
        adapter = Path(cfg.adapter_path)
        if not (adapter / "adapter_config.json").exists():
            raise ValueError(
                f"{adapter} holds no LoRA adapter (no adapter_config.json); pass the 'adapter' folder of a "
                "checkpoint written by `python -m rlhf train` with --policy.adapter_path"
            )
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    else:
        names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
        missing = [m for m in cfg.lora.target_modules if m not in names]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)})
            raise ValueError(
                f"LoRA target modules {missing} are not in {cfg.name_or_path!r}; its linear layers are {linear}; "
                "pass --policy.lora.target_modules with names from that list"
            )
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            bias="none",
            task_type=TaskType.SEQ_2_SEQ_LM if enc_dec else TaskType.CAUSAL_LM,
        )
        model = get_peft_model(base, lora)
    policy = Policy(model, tok, enc_dec)
    if cfg.adapter_path:
        vh = Path(cfg.adapter_path).parent / VALUE_HEAD_FILE
        if vh.exists():
            policy.load_value_head(vh)
    disable_dropout(policy)
    return policy


def disable_dropout(module: nn.Module) -> None:
    """Dropout off everywhere (LoRA's too): rollout and loss must see the same deterministic network."""
    from trl.trainer.utils import disable_dropout_in_model

    disable_dropout_in_model(module)
    module.eval()
