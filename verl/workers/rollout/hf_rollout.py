"""Rollout engine on a plain Hugging Face model: a batched, left-padded decode loop with a KV cache.

Why a hand-written loop over the HF model instead of `model.generate()`: it gives the same output
contract as the vLLM engine without side effects on the caller's process:
- stop strings are matched on the detokenised *generated* text (special tokens skipped), exactly like
  vLLM's detokenizer: a row stops at the token that completes the first occurrence of any stop string,
  and nothing is generated past it (transformers' `StopStringCriteria` also matches strings that start
  in the prompt, and misses a stop string that lies strictly inside one token);
- `logprobs` are the log-softmax of the *raw* model logits (temperature 1, before top-k/top-p) of the
  sampled token, which is vLLM's default `logprobs_mode="raw_logprobs"`; `generate(output_logits=True)`
  would keep a [steps, batch, vocab] tensor alive to obtain the same numbers;
- sampling uses a private `torch.Generator` (seeded by `SamplingParams.seed`, or by the engine seed),
  so the global RNG of the training process is untouched;
- finished rows are dropped from the batch (the cache is compacted) so rows that stop early at
  `</search>` do not keep costing forward passes.

Conventions shared with vLLM: an EOS token ends a row with `finish_reason="stop"`, `stop_reason=None`,
and the EOS id IS part of `token_ids`; a stop string gives `finish_reason="stop"`, `stop_reason=<the
string>`; running out of `max_tokens` (or of `max_model_len`) gives `"length"`. EOS wins over length on
the last allowed token, as in vLLM's scheduler. Outputs are prompt-major (p0s0, p0s1, ..., p1s0, ...).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from verl.utils.models import contiguous_lm_head_input
from verl.workers.rollout.base import GenOutput, SamplingParams

logger = logging.getLogger(__name__)


def sample_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Pick one token per row. logits: [B, V] raw model logits -> [B] token ids."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability mass of strictly better tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= params.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


class HFRollout:
    """`RolloutEngine` over an unsharded `AutoModelForCausalLM` that it owns (eval mode, no grad)."""

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        seed: int = 0,
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        contiguous_lm_head_input(self.model)  # the prefill keeps one position: see the helper
        config = self.model.config
        self.max_model_len = int(max_model_len or getattr(config, "max_position_embeddings", 4096))
        self.max_num_seqs = max(1, int(max_num_seqs))
        self.eos_token_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids))
        self._generator = torch.Generator(device=self.device).manual_seed(int(seed))
        logger.info("HFRollout: %s on %s (%s), max_model_len=%d", model_path, device, dtype, self.max_model_len)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_cfg = getattr(self.model, "generation_config", None)
        for source in (getattr(gen_cfg, "eos_token_id", None), self.tokenizer.eos_token_id):
            if source is None:
                continue
            ids.update([int(source)] if isinstance(source, int) else [int(x) for x in source])
        if not ids:
            raise ValueError("the model has no eos_token_id (config/generation_config/tokenizer); set one")
        return ids

    # ----------------------------------------------------------------------------------------------- generate
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenOutput]:
        params.validate(len(prompts))
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
            if len(p) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens, not below max_model_len={self.max_model_len}: shorten "
                    "data.max_prompt_length or raise the engine's max_model_len"
                )
        expanded = [list(p) for p in prompts for _ in range(params.n)]  # prompt-major
        caps = [params.max_tokens_of(i) for i in range(len(prompts)) for _ in range(params.n)]
        generator = self._generator
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(params.seed))
        outputs: list[GenOutput] = []
        for start in range(0, len(expanded), self.max_num_seqs):
            end = start + self.max_num_seqs
            outputs.extend(self._generate_chunk(expanded[start:end], caps[start:end], params, generator))
        return outputs

    @torch.inference_mode()
    def _generate_chunk(
        self, prompts: list[list[int]], caps: list[int], params: SamplingParams, generator: torch.Generator
    ) -> list[GenOutput]:
        from transformers import DynamicCache

        batch, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[i, width - len(p) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
        limits = [min(cap, self.max_model_len - len(p)) for p, cap in zip(prompts, caps)]

        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()  # [B, V]
        next_position = position_ids[:, -1] + 1  # [B]
        rows = list(range(batch))  # batch position -> original row
        results = [GenOutput(token_ids=[], logprobs=[] if params.logprobs else None) for _ in prompts]
        stopper = _StopStringMatcher(self.tokenizer, params.stop)

        while rows:
            tokens = sample_next_token(logits, params, generator)  # [b]
            token_list = tokens.tolist()
            if params.logprobs:
                chosen = F.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1).tolist()
            keep: list[int] = []
            for j, row in enumerate(rows):
                res = results[row]
                res.token_ids.append(token_list[j])
                if params.logprobs:
                    res.logprobs.append(float(chosen[j]))
                if self._finished(res, limits[row], stopper):
                    continue
                keep.append(j)
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                tokens, attention_mask, next_position = tokens[index], attention_mask[index], next_position[index]
                rows = [rows[j] for j in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=-1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=attention_mask,
                position_ids=next_position[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :].float()
            next_position = next_position + 1
        return results

    def _finished(self, res: GenOutput, limit: int, stopper: _StopStringMatcher) -> bool:
        """Set finish/stop reasons on `res` if its newest token ends it (vLLM's order: EOS, stop, length)."""
        if res.token_ids[-1] in self.eos_token_ids:
            res.finish_reason, res.stop_reason = "stop", None
            return True
        matched = stopper.match(res.token_ids)
        if matched is not None:
            res.finish_reason, res.stop_reason = "stop", matched
            return True
        if len(res.token_ids) >= limit:
            res.finish_reason, res.stop_reason = "length", None
            return True
        return False

    # ----------------------------------------------------------------------------------------------- weights
    @torch.no_grad()
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy full HF-named weights into the model in place (tied lm_head follows the embedding)."""
        state_dict = dict(state_dict)
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        if tied:
            state_dict.pop("lm_head.weight", None)
        result = self.model.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"update_weights: state dict does not match the rollout model (HF naming expected): "
                f"missing={missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected={result.unexpected_keys[:5]}"
            )

    def close(self) -> None:
        """Release the model (nothing runs in the background)."""
        self.model = None


class _StopStringMatcher:
    """Finds the first stop string completed by the newest token of a row's generated text."""

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        # Every token decodes to >= 1 char except byte pieces of a multi-byte char (<= 4 per char).
        self.window = 4 * max((len(s) for s in self.stop), default=0) + 4

    def match(self, token_ids: list[int]) -> str | None:
        if not self.stop:
            return None
        # Any earlier occurrence would have ended the row at an earlier step, so a window that ends at the
        # newest token and is long enough to hold every stop string is sufficient.
        text = self.tokenizer.decode(token_ids[-self.window :], skip_special_tokens=True)
        for s in self.stop:
            if s in text:
                return s
        return None
