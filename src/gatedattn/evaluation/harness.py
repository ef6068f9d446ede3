"""An lm-evaluation-harness model: ``lm_eval`` can score every model ``load_model`` reads (``pip install
'gatedattn[eval]'``). Importing this module registers it as ``gatedattn``:

    import gatedattn.evaluation.harness, lm_eval
    lm_eval.simple_evaluate(model="gatedattn", model_args="pretrained=smollm2", tasks=[...])

Our models see ``[BOS] + text``, as in training: a context is encoded with BOS in front, and an empty context
or a rolling window starts from BOS. HF models (``smollm2``, HF directories) use their tokenizer's own special
tokens, with BOS (else EOS) as the prefix of an empty context. Rolling log-likelihoods use lm_eval's disjoint
windows of ``max_length`` tokens (the training run's data.seq_len minus BOS for ours when recorded, else the
model's max_position_embeddings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MissingExtraError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:
    raise MissingExtraError("the lm-evaluation-harness adapter needs lm-eval: pip install 'gatedattn[eval]'") from None

from ..artifacts import load_model


@register_model("gatedattn")
class GatedAttnLM(TemplateLM):
    """``model_args``: ``pretrained`` (anything load_model reads), ``device`` (cpu), ``batch_size`` (requests
    per forward; an integer, lm_eval's "auto" is not offered), ``max_length`` (tokens per forward).
    ``max_batch_size`` is accepted because lm_eval passes it, and unused: batches have a fixed size."""

    def __init__(self, pretrained: str, device: str = "cpu", batch_size: int | str = 1, max_length: int | None = None,
                 max_batch_size: int | None = None):
        super().__init__()
        loaded = load_model(pretrained, device)
        self.model, self.tok = loaded.model, loaded.require_tokenizer()
        self.is_ours = loaded.is_ours
        self._device = torch.device(device)
        self.batch_size = int(batch_size)
        if max_length is None:
            recorded = loaded.run_config.data.seq_len - 1 if loaded.is_ours and loaded.run_config else None
            max_length = recorded or self.model.config.max_position_embeddings
        self.max_length = int(max_length)

    # -- tokens ------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """With special tokens unless told otherwise: ours get BOS in front, HF models their own."""
        special = add_special_tokens is not False
        if self.is_ours:
            return ([self.prefix_token_id] if special else []) + self.tok.encode(string)
        return self.tok.encode(string, add_special_tokens=special)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)

    # -- scoring -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids.to(self._device)).logits.float()

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives it) per (key, context, continuation),
        on the last max_length + 1 tokens; right-padded batches, longest first (a causal model's outputs at
        the real positions do not see the padding)."""
        windows = []  # (input ids, the continuation's ids at their end)
        for _, context, continuation in requests:
            ids = (context + continuation)[-(self.max_length + 1):]
            windows.append((ids[:-1], ids[-min(len(continuation), len(ids) - 1):]))
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(windows)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = len(windows[batch[0]][0])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(windows[i][0])] = torch.tensor(windows[i][0])
            logprobs = F.log_softmax(self._logits(ids), -1)
            for row, i in enumerate(batch):
                inputs, continuation = windows[i]
                targets = torch.tensor(continuation)
                scores = logprobs[row, len(inputs) - len(continuation):len(inputs)]
                total = float(scores.gather(-1, targets[:, None]).sum())
                results[i] = (total, bool((scores.argmax(-1) == targets).all()))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in (r.args for r in requests):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text, add_special_tokens=False), self.prefix_token_id, self.max_length, 1)]
            out.append(sum(ll for ll, _ in self._loglikelihood_tokens([(None, c, t) for c, t in windows])))
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first of ``until`` (default: EOS only)."""
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):]
            prompt = torch.tensor([ids], device=self._device)
            generated = self.model.generate(prompt, max_new_tokens=max_new, do_sample=False,
                                            eos_token_id=self.eot_token_id)[0, len(ids):].tolist()
            if self.eot_token_id in generated:
                generated = generated[:generated.index(self.eot_token_id)]
            text = self.tok_decode(generated)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def evaluate_local_tasks(pretrained: str, tasks: list[str], tasks_dir: str, limit: int | None = None,
                         batch_size: int = 1, max_length: int | None = None, device: str = "cpu") -> dict[str, dict]:
    """lm_eval's scores of ``pretrained`` on tasks found in ``tasks_dir`` (e.g. written by
    ``harness_tasks.write_tasks``): {task: {metric: value}} without lm_eval's ",none" filter suffix."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = GatedAttnLM(pretrained, device=device, batch_size=batch_size, max_length=max_length)
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)  # lm_eval's own: seconds to index
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, bootstrap_iters=0,
                          log_samples=False)
    return {task: {key.split(",")[0]: value for key, value in metrics.items() if key != "alias"}
            for task, metrics in out["results"].items()}
