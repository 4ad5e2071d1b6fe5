"""Token ids of what the framework inserts into a trajectory: observations and the corrective message.

Two formats:
- "inline" (ZeroSearch / Search-R1): the documents go inside the assistant's own text,
  `\\n\\n<information>docs</information>\\n\\n`, and the policy simply continues.
- "chat": the assistant turn is closed, the documents become a new turn of `observation_role`
  (`<information>docs</information>` as its content) rendered with the tokenizer's chat template, and a new
  assistant turn is opened. The wrapper is derived once by rendering a sentinel conversation, so any
  template works that can render user -> assistant -> <role> with a generation prompt. With
  `search.action_format=tool_call` the role is `tool` (the default): ChatML templates render
  `<|im_start|>tool ...`, Qwen2.5 / Hermes ones a user turn holding `<tool_response> ... </tool_response>`. The
  `<information>` wrapper stays inside the tool content, so the reward reads both action formats alike.

Every piece is tokenised once at start-up except the documents; an observation is head + docs + tail with
the documents cut so the whole block fits in `limit` tokens (the wrapper always stays intact, so the
policy always sees a closed `</information>`). The original cut the observation's token ids, closing tag
included.
"""

from __future__ import annotations

from zerosearch.rollout.config import GenerationConfig

_ASSISTANT_MARK = "ZSASSISTANTMARK"
_OBSERVATION_MARK = "ZSOBSERVATIONMARK"


def chat_wrapper(tokenizer, role: str = "user") -> tuple[str, str]:
    """(before, after): the template text between an assistant's content and an observation turn's content,
    and between the observation's content and the reopened assistant turn's content."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("search.observation_format=chat needs a tokenizer with a chat template; use inline")
    messages = [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": _ASSISTANT_MARK},
        {"role": role, "content": _OBSERVATION_MARK},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # templates raise their own error types (jinja TemplateError, ...)
        raise ValueError(f"the chat template cannot render a {role!r} turn after an assistant turn ({e}); "
                         "set search.observation_role to a role it accepts, or observation_format=inline") from e
    if not isinstance(text, str) or _ASSISTANT_MARK not in text or _OBSERVATION_MARK not in text:
        raise ValueError("the chat template dropped the message contents; use search.observation_format=inline")
    after_assistant = text.split(_ASSISTANT_MARK, 1)[1]
    before, after = after_assistant.split(_OBSERVATION_MARK, 1)
    return before, after


class ObservationRenderer:
    """Builds observation and corrective-message token ids for one tokenizer and config."""

    def __init__(self, tokenizer, cfg: GenerationConfig) -> None:
        self.tokenizer = tokenizer
        self.max_obs_length = cfg.max_obs_length
        self.chat = cfg.observation_format == "chat"
        if self.chat:
            before, after = chat_wrapper(tokenizer, cfg.observation_role)
            head, tail = before + "<information>", "</information>" + after
            corrective = before + cfg.invalid_action_message + after
        else:
            head, tail = "\n\n<information>", "</information>\n\n"
            corrective = "\n" + cfg.invalid_action_message + "\n"
        self.head_ids = self.encode(head)
        self.tail_ids = self.encode(tail)
        self.corrective_ids = self.encode(corrective)
        if len(self.head_ids) + len(self.tail_ids) >= cfg.max_obs_length:
            raise ValueError(
                f"data.max_obs_length={cfg.max_obs_length} leaves no room for documents: the <information> "
                f"wrapper alone takes {len(self.head_ids) + len(self.tail_ids)} tokens; raise it"
            )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def min_observation_tokens(self) -> int:
        """An observation needs the wrapper plus at least one document token."""
        return len(self.head_ids) + len(self.tail_ids) + 1

    def _skip_duplicate(self, ids: list[int], last_token: int | None) -> list[int]:
        """Chat format: if the policy itself ended its turn with the template's first token (EOS such as
        `<|im_end|>`), that token is not inserted a second time."""
        if self.chat and last_token is not None and ids and ids[0] == last_token:
            return ids[1:]
        return ids

    def observation(self, docs_text: str, limit: int, last_token: int | None = None) -> list[int]:
        """head + docs + tail in at most min(limit, max_obs_length) tokens (docs are cut; [] if none fit)."""
        limit = min(limit, self.max_obs_length)
        head = self._skip_duplicate(self.head_ids, last_token)
        room = limit - len(head) - len(self.tail_ids)
        if room < 1:
            return []
        return head + self.encode(docs_text)[:room] + self.tail_ids

    def corrective(self, last_token: int | None = None) -> list[int]:
        return self._skip_duplicate(self.corrective_ids, last_token)
